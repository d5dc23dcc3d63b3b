"""SR + SEG back to PACS: objects validated by dciodvfy, the SEG on the source geometry, and the persistent sender
(plan once, send by C-STORE to a real SCP, retry with backoff after a failure, survive a restart)."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from appliance import ontology
from appliance.store import open_store
from appliance.store.delivery_queries import delivery_states, missing_deliveries
from dicom_node.config import NodeConfig
from dicom_node.delivery import ResultSender
from dicom_node.seg import build_seg
from dicom_node.sr import build_sr
from tests.dicom_node.conftest import scu
from tests.dicom_node.results_fixtures import StandInPACS, free_port, make_result, make_synth_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_synth_study(tmp_path_factory.mktemp("synth"))


def _dciodvfy(path) -> tuple[list[str], list[str]]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def _cv(item) -> str:
    c = item.ConceptNameCodeSequence[0]
    return c.get("CodeValue") or c.get("LongCodeValue")


def _walk(items):
    for it in items:
        yield it
        yield from _walk(it.get("ContentSequence", []))


def test_sr_content_and_dciodvfy(study, tmp_path):
    from appliance.scoring import NEVER_POSITIVE
    from appliance.store.results import FindingResult
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in study.files]
    result = make_result(study)  # plus a finding this bundle never calls (a high score cannot make it present)
    result.findings.append(FindingResult("liver", "liver_lesion", 0.97, NEVER_POSITIVE, False))
    sr = build_sr(result, src)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.VerificationFlag == "UNVERIFIED" and ds.CompletionFlag == "PARTIAL"
    assert ds.StudyInstanceUID == study.study_uid
    refs = {r.ReferencedSOPInstanceUID for st in ds.CurrentRequestedProcedureEvidenceSequence
            for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert refs == {s.SOPInstanceUID for s in src}
    items = list(_walk(ds.ContentSequence))
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any("not for diagnostic use" in t.lower() for t in texts) and any("steatosis" in t for t in texts)
    volumes = [i for i in items if i.ValueType == "NUM" and _cv(i) == "118565006"]
    assert len(volumes) == len(study.measurements)
    liver_ml = study.measurements["liver"].volume_ml
    assert any(abs(float(v.MeasuredValueSequence[0].NumericValue) - liver_ml) < 0.01 and
               v.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mL" for v in volumes)
    hu = [i for i in items if i.ValueType == "NUM" and _cv(i) == "112031"]
    assert hu and all(h.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]" for h in hu)
    evaluations = {_cv(i): i.ConceptCodeSequence[0].CodeMeaning
                   for i in items if i.ValueType == "CODE"}
    assert evaluations["hepatic_steatosis"] == "Present" and evaluations["kidneys_abnormal"] == "Absent"
    assert evaluations["liver_lesion"] == "Indeterminate"  # not screened: never reported as absent
    if shutil.which("dciodvfy"):
        errors, warnings = _dciodvfy(path)
        assert errors == [], errors
    # With the SEG: volumetric ROI groups (TID 1411) referencing each organ's segment, still valid.
    seg = tmp_path / "seg.dcm"
    build_seg(study.labels_path, src).save_as(seg, enforce_file_format=True)
    with_seg = build_sr(make_result(study), src, segmentation=pydicom.dcmread(seg))
    with_seg.save_as(path, enforce_file_format=True)
    segs = [i for i in _walk(pydicom.dcmread(path).ContentSequence) if i.ValueType == "IMAGE"
            and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]]
    assert len(segs) == len([n for n in np.unique(study.organ_map) if n])
    if shutil.which("dciodvfy"):
        errors, warnings = _dciodvfy(path)
        assert errors == [], errors


def _seg_frames(seg: pydicom.Dataset) -> dict[tuple[str, str], np.ndarray]:
    """(segment label, referenced source SOPInstanceUID) -> binary frame."""
    labels = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out = {}
    for k, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        sop = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[(labels[number], sop)] = pixels[k]
    return out


def test_seg_lies_on_source_slices_and_validates(study, tmp_path):
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in study.files]
    seg = build_seg(study.labels_path, src, bundle_id="bundle-test-1")
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    present = sorted({int(v) for v in np.unique(study.organ_map) if v})
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [ontology.ORGANS[i - 1].name for i in present]
    liver = next(s for s in ds.SegmentSequence if s.SegmentLabel == "liver")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert liver.SegmentAlgorithmType == "AUTOMATIC" and liver.SegmentAlgorithmName == "TotalFM"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    frames = _seg_frames(ds)
    assert len(frames) == int(ds.NumberOfFrames) > len(present)
    compared = 0
    # write_ct_series writes array slice k as file k with rows = axis 1, columns = axis 2: the SEG must match.
    for k, f in enumerate(study.files):
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        for i in present:
            want = study.organ_map[k] == i
            got = frames.get((ontology.ORGANS[i - 1].name, sop))
            if got is None:
                assert not want.any()  # empty frames are omitted
            else:
                assert np.array_equal(got.astype(bool), want)
                compared += 1
    assert compared == len(frames)
    if shutil.which("dciodvfy"):
        errors, warnings = _dciodvfy(path)
        assert errors == [], errors


def test_sr_references_the_only_segment_of_a_one_organ_seg(study, tmp_path):
    # highdicom puts the segment number of a one-segment SEG in the shared functional groups; the SR must still
    # reference it (found by the demo: a study where only the liver was segmented broke the SR build).
    from appliance.nifti_io import read_nifti, write_nifti
    lab = read_nifti(study.labels_path)
    liver = ontology.ORGANS.index(next(o for o in ontology.ORGANS if o.name == "liver")) + 1
    one = lab.with_array(np.where(lab.array == liver, liver, 0).astype(np.uint8))
    write_nifti(one, tmp_path / "liver_only.nii.gz")
    src = [pydicom.dcmread(f) for f in study.files]
    seg = build_seg(tmp_path / "liver_only.nii.gz", src, bundle_id="bundle-test-1")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    sr = build_sr(make_result(study), src, segmentation=seg)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert "(0062,000B)" in str(pydicom.dcmread(path))  # Referenced Segment Number
    if shutil.which("dciodvfy"):
        errors, _ = _dciodvfy(path)
        assert errors == [], errors


def test_seg_refuses_multiframe_sources_with_a_clear_error(study):
    from dicom_node.seg import SegError
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in study.files]
    src[0].NumberOfFrames = 16
    with pytest.raises(SegError, match="multi-frame"):
        build_seg(study.labels_path, src)


def _receive_and_complete(node, study, labels_path=None) -> int:
    """Send the study's DICOM to the node, queue + claim + complete its job with the hand-made result."""
    assoc = scu().associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert all(assoc.send_c_store(pydicom.dcmread(f)).Status == 0 for f in study.files)
    assoc.release()
    store = node.store
    store.enqueue_analysis(study.study_uid, reason="test")
    job = store.claim_job("w1")
    store.complete_job(job.id, "w1", make_result(study, labels_path))
    return store.latest_analysis(study.study_uid)[0]


def test_sender_delivers_sr_and_seg_once_and_retries_after_failure(node_factory, study, tmp_path):
    node = node_factory()
    analysis_id = _receive_and_complete(node, study)
    pacs_port = free_port()
    cfg = NodeConfig(**{**node.config.__dict__, "destinations": {"pacs": f"PACS@127.0.0.1:{pacs_port}"},
                        "delivery_retry_base_seconds": 30.0})
    # PACS down: both deliveries fail, stay pending with a backoff and the error kept.
    sender = ResultSender(cfg, node.store)
    stats = sender.run_once()
    assert (stats.planned, stats.sent, stats.failed) == (2, 0, 2)
    states = delivery_states(node.store, analysis_id)
    assert [(s["kind"], s["state"], s["attempts"]) for s in states] == [("SR", "pending", 1), ("SEG", "pending", 1)]
    assert "association" in states[0]["last_error"]
    assert all(s["next_try_at"] > dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(seconds=20)
               for s in states)
    built = {k: pydicom.dcmread(sender.object_path(_src(node, analysis_id), k)).SOPInstanceUID for k in ("SR", "SEG")}
    # "Restart": a new store object and sender; nothing is due yet, nothing is planned twice.
    store2 = open_store(cfg.store_url)
    assert ResultSender(cfg, store2).run_once().__dict__ == {"planned": 0, "sent": 0, "failed": 0}
    pacs = StandInPACS(pacs_port)
    try:
        store2.delivery_retry_base_seconds = 0  # make the backed-off rows due now (same as waiting 30 s)
        with store2.session() as s:
            from appliance.store.models import Delivery
            for d in s.query(Delivery):
                d.next_try_at = dt.datetime(2000, 1, 1)
        stats = ResultSender(cfg, store2).run_once()
        assert (stats.planned, stats.sent, stats.failed) == (0, 2, 0)
        got = {ds.Modality: ds for ds in pacs.received}
        assert set(got) == {"SR", "SEG"}
        assert {k: got[k].SOPInstanceUID for k in got} == built  # same objects as built before the failure
        assert all(ds.StudyInstanceUID == study.study_uid for ds in pacs.received)
        # IHE AI Results: the SR's organ groups reference the segments of the SEG that was sent with it.
        seg_refs = {r.ReferencedSOPInstanceUID for i in _walk(got["SR"].ContentSequence) if i.ValueType == "IMAGE"
                    for r in i.ReferencedSOPSequence if r.ReferencedSOPClassUID == got["SEG"].SOPClassUID}
        assert seg_refs == {got["SEG"].SOPInstanceUID}
        assert [s["state"] for s in delivery_states(store2, analysis_id)] == ["sent", "sent"]
        assert ResultSender(cfg, store2).run_once().__dict__ == {"planned": 0, "sent": 0, "failed": 0}
        assert len(pacs.received) == 2
        assert missing_deliveries(store2, ["pacs"]) == []
    finally:
        pacs.stop()


def _src(node, analysis_id):
    from appliance.store.delivery_queries import analysis_source
    return analysis_source(node.store, analysis_id)


def test_missing_label_map_fails_the_seg_only_with_a_clear_error(node_factory, study, tmp_path):
    node = node_factory()
    analysis_id = _receive_and_complete(node, study, labels_path=tmp_path / "gone.nii.gz")
    pacs = StandInPACS()
    try:
        cfg = NodeConfig(**{**node.config.__dict__, "destinations": {"pacs": f"PACS@127.0.0.1:{pacs.port}"}})
        stats = ResultSender(cfg, node.store).run_once()
        assert (stats.sent, stats.failed) == (1, 1)
        seg = [s for s in delivery_states(node.store, analysis_id) if s["kind"] == "SEG"][0]
        assert seg["state"] == "pending" and "no label map" in seg["last_error"]
        assert [ds.Modality for ds in pacs.received] == ["SR"]
    finally:
        pacs.stop()


REAL = __import__("pathlib").Path("/work/shared/data/real-ct/ts_dicom_series")


@pytest.mark.skipif(not (REAL / "seg_totalsegmentator_fast.nii.gz").is_file(), reason="shared real CT not present")
def test_seg_geometry_on_a_real_series_matches_the_appliance_reader(tmp_path):
    """Patient B's real 512x512 series and its TotalSegmentator labels: the SEG's sampling of the label map equals
    the appliance's own read_series + resample(order=0) on every pixel, and the SEG/SR validate."""
    from pydicom.uid import generate_uid
    from appliance.crops import organ_index_map
    from appliance.dicom_io import read_series
    from appliance.nifti_io import read_nifti, write_nifti
    from appliance.volume import Volume, resample
    from dicom_node.seg import labels_on_source, sort_slices
    ts = read_nifti(REAL / "seg_totalsegmentator_fast.nii.gz")
    organs = Volume(organ_index_map(ts), ts.spacing, ts.origin, ts.direction)
    write_nifti(organs, tmp_path / "labels.nii.gz")
    src = sort_slices([pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((REAL / "dicom").glob("*.dcm"))])
    ct = read_series(REAL / "dicom")
    ref = resample(organs, reference=ct, order=0).array
    mine = labels_on_source(organs, src)
    for j, ds in enumerate(src):
        k = int(round(float(np.dot(np.asarray(ds.ImagePositionPatient, float) - np.asarray(ct.origin),
                                   np.asarray(ct.direction)[:, 0])) / ct.spacing[0]))
        assert np.array_equal(mine[j], ref[k]), f"slice {j}"
    study_uid, series_uid = generate_uid(), generate_uid()
    for ds in src:  # this anonymised series has blank study/series UIDs, which our SCP would refuse
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    build_seg(tmp_path / "labels.nii.gz", src).save_as(seg_path, enforce_file_format=True)
    result = make_result_for(organs)
    build_sr(result, src, segmentation=pydicom.dcmread(seg_path)).save_as(sr_path, enforce_file_format=True)
    if shutil.which("dciodvfy"):
        for p in (seg_path, sr_path):
            errors, _ = _dciodvfy(p)
            assert errors == [], (p.name, errors)


def make_result_for(organs):
    from appliance.store.results import AnalysisResult, OrganResult, ReportDraft
    present = [ontology.ORGANS[i - 1].name for i in np.unique(organs.array) if i]
    return AnalysisResult([OrganResult(n, "ok", 100.0, 40.0, 5.0) for n in present], [], ReportDraft("draft"),
                          None, "bundle-test-1")
