"""AnalysisResult -> DICOM Comprehensive 3D SR, TID 1500 Measurement Report in the IHE AI Results style (highdicom).

Content tree (codes chosen here, documented in docs/results/dicom.md):
  Imaging Measurement Report (DCM 126000), observer = device "TotalFM", procedure = CT (SCT 77477000)
  +- Imaging Measurements: one Measurement Group (TID 1501) per organ, finding site = the organ's SCT code,
  |    algorithm identification = TotalFM / bundle id:
  |    - Volume (SCT 118565006) in mL (UCUM "mL")
  |    - Attenuation Coefficient (DCM 112031) in HU (UCUM "[hnsf'U]"), derivation Mean (SCT 373098007)
  |      (and Standard Deviation, SCT 386136009, when known)
  |    - per finding of that organ: qualitative evaluation <finding> = Present (SCT 52101004) / Absent
  |      (SCT 272519000) / Indeterminate (SCT 82334004) for a finding the bundle never calls (no reliable threshold
  |      on validation: not screened, so "Absent" would be a claim the model cannot make); the model score and its
  |      decision threshold as unitless measurements (UCUM "1") named "<finding> AI score" / "<finding> AI
  |      decision threshold" (private scheme 99TOTALFM: no standard codes exist for these findings)
  +- Qualitative Evaluations (DCM 126010): TEXT Summary (DCM 121111) = the draft report text, TEXT Comment
       (DCM 121106) = the disclaimer.
VerificationFlag is UNVERIFIED, CompletionFlag PARTIAL: a radiologist must review it.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from appliance.scoring import never_called
from appliance.store.results import AnalysisResult
from dicom_node.codes import (ALGORITHM_NAME, DISCLAIMER, MANUFACTURER, PRIVATE_SCHEME, finding_code,
                              with_type2,
                              organ_code, software_version)

CT_PROCEDURE = Code("77477000", "SCT", "Computerized axial tomography")
VOLUME = Code("118565006", "SCT", "Volume")
ATTENUATION = Code("112031", "DCM", "Attenuation Coefficient")
MEAN = Code("373098007", "SCT", "Mean")
STD = Code("386136009", "SCT", "Standard Deviation")
ML = Code("mL", "UCUM", "milliliter")
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
NO_UNITS = Code("1", "UCUM", "no units")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
INDETERMINATE = Code("82334004", "SCT", "Indeterminate")  # a finding the bundle never calls: not screened, not absent
ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
QUALITATIVE_EVALUATIONS = Code("126010", "DCM", "Qualitative Evaluations")
SUMMARY = Code("121111", "DCM", "Summary")
COMMENT = Code("121106", "DCM", "Comment")
SR_SERIES_NUMBER = 9901


def _measurement(name: Code, value: float, unit: Code, algo, site, derivation: Code | None = None):
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation, algorithm_id=algo,
                             finding_sites=[site])


def build_sr(result: AnalysisResult, source: Sequence[Dataset], *, segmentation: Dataset | None = None,
             sop_instance_uid: str | None = None, series_instance_uid: str | None = None,
             instance_number: int = 1) -> hd.sr.Comprehensive3DSR:
    """The SR for one analysis; `source` = the analysed series' instances (headers suffice), all of one study.

    segmentation: the SEG sent with it; each organ that has a segment there becomes a volumetric ROI group
    (TID 1411) that references its segment, as IHE AI Results asks, instead of a plain TID 1501 group."""
    if not source:
        raise ValueError("no source instances: the SR must reference the analysed series")
    version = software_version(result.bundle_id)
    algo = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=version)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["totalfm-device", ALGORITHM_NAME]),  # stable per product
            name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER, model_name=version))
    context = hd.sr.ObservationContext(observer_device_context=observer)

    segments = ({str(d.SegmentLabel): int(d.SegmentNumber) for d in segmentation.SegmentSequence}
                if segmentation is not None else {})
    organs = {o.organ: o for o in result.organs}
    by_organ: dict[str, list] = {}
    for f in result.findings:
        by_organ.setdefault(f.organ, []).append(f)
    groups = []
    for name in list(organs) + [n for n in by_organ if n not in organs]:
        site = hd.sr.FindingSite(anatomic_location=organ_code(name))
        o = organs.get(name)
        measurements, evaluations = [], []
        if o is not None and o.volume_ml is not None:
            measurements.append(_measurement(VOLUME, o.volume_ml, ML, algo, site))
        if o is not None and o.mean_hu is not None:
            measurements.append(_measurement(ATTENUATION, o.mean_hu, HU, algo, site, MEAN))
        if o is not None and o.std_hu is not None:
            measurements.append(_measurement(ATTENUATION, o.std_hu, HU, algo, site, STD))
        for f in by_organ.get(name, []):
            fc = finding_code(f.finding)
            value = PRESENT if f.positive else (INDETERMINATE if never_called(f.threshold) else ABSENT)
            evaluations.append(hd.sr.QualitativeEvaluation(name=fc, value=value))
            measurements.append(_measurement(Code(f"{f.finding}.score", PRIVATE_SCHEME, f"{fc.meaning} AI score"),
                                             f.score, NO_UNITS, algo, site))
            if f.threshold is not None:
                measurements.append(_measurement(
                    Code(f"{f.finding}.threshold", PRIVATE_SCHEME, f"{fc.meaning} AI decision threshold"),
                    f.threshold, NO_UNITS, algo, site))
        if not measurements and not evaluations:
            continue
        status = o.status if o is not None else "not segmented"
        common = dict(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{name} ({status})"),
            finding_type=ANATOMICAL_STRUCTURE, algorithm_id=algo, finding_sites=[site],
            measurements=measurements or None, qualitative_evaluations=evaluations or None)
        if name in segments:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=_referenced_segment(segmentation, segments[name], source), **common))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))

    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=CT_PROCEDURE,
                                     imaging_measurements=groups or None, title=codes.DCM.ImagingMeasurementReport)
    # The free-text draft and the disclaimer: TID 1500's "Qualitative Evaluations" container at the root.
    texts = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items = []
    if result.report is not None and result.report.draft_text:
        items.append(hd.sr.TextContentItem(name=SUMMARY, value=result.report.draft_text, relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(name=COMMENT, value=DISCLAIMER, relationship_type="CONTAINS"))
    texts.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    report[0].ContentSequence.append(texts)

    sr = hd.sr.Comprehensive3DSR(
        evidence=[with_type2(d) for d in source] + ([segmentation] if segmentation is not None else []), content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=False, is_final=False, is_verified=False)
    sr.SeriesDescription = "AI draft - not for diagnostic use"
    sr.ManufacturerModelName = ALGORITHM_NAME
    sr.SoftwareVersions = version[:64]
    return sr


def _referenced_segment(segmentation: Dataset, number: int, source: Sequence[Dataset]):
    """highdicom's from_segmentation reads the segment number from the per-frame groups; a SEG with ONE segment
    carries it in the shared groups instead (highdicom writes it so), and from_segmentation then fails. In that case
    every frame belongs to the segment, so reference the segment (no frame list: DICOM forbids both) and its source
    images directly."""
    try:
        return hd.sr.ReferencedSegment.from_segmentation(segmentation, number)
    except AttributeError:
        return hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=number,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(d) for d in source])
