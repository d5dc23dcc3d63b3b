"""Coded concepts shared by the SR and the SEG: organ codes (SNOMED CT, as in DICOM CID 7710/4031), finding codes
(private scheme 99TOTALFM, since the ontology's findings have no standard code), product identification."""
from __future__ import annotations

from pydicom.sr.coding import Code

from appliance import ontology

MANUFACTURER = "TotalFM"
ALGORITHM_NAME = "TotalFM"
PRIVATE_SCHEME = "99TOTALFM"
DISCLAIMER = ("AI draft for radiologist review - not a diagnosis. Not for diagnostic use: UNVERIFIED output of an "
              "automated algorithm.")

# ontology organ name -> (SCT code, meaning)
ORGAN_SCT = {
    "liver": ("10200004", "Liver"),
    "gallbladder": ("28231008", "Gallbladder"),
    "spleen": ("78961009", "Spleen"),
    "pancreas": ("15776009", "Pancreas"),
    "kidneys": ("64033007", "Kidney"),
    "adrenal_glands": ("23451007", "Adrenal gland"),
    "stomach": ("69695003", "Stomach"),
    "esophagus": ("32849002", "Esophagus"),
    "small_bowel": ("30315005", "Small intestine"),
    "colon": ("71854001", "Colon"),
    "urinary_bladder": ("89837001", "Urinary bladder"),
    "prostate": ("41216001", "Prostate"),
    "aorta": ("15825003", "Aorta"),
    "lungs": ("39607008", "Lung"),
    "heart": ("80891009", "Heart"),
    "spine": ("421060004", "Spine"),
}
BODY = ("38266002", "Entire body")  # fallback site for study-level findings


def organ_code(name: str) -> Code:
    value, meaning = ORGAN_SCT.get(name, BODY)
    return Code(value, "SCT", meaning)


def finding_code(name: str) -> Code:
    display = name.replace("_", " ").capitalize()
    for f in getattr(ontology, "CATEGORY_FINDINGS", ()):
        if f.name == name:
            display = f.display
            break
    return Code(name, PRIVATE_SCHEME, display)  # highdicom writes values over 16 characters as LongCodeValue


def software_version(bundle_id: str | None) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        pkg = version("totalfm")
    except PackageNotFoundError:
        pkg = "dev"
    return f"{pkg} bundle {bundle_id or 'unknown'}"


TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "AccessionNumber", "StudyID")


def with_type2(ds):
    """A shallow copy of a source header with the type 2 Patient/Study attributes present (empty when the modality
    left them out): highdicom copies them into the SR/SEG and fails when a sender omitted one."""
    import copy
    out = copy.copy(ds)
    for key in TYPE2_PATIENT_STUDY:
        if key not in out:
            setattr(out, key, "")
    # Some anonymisers blank the dataset's SOP Class/Instance UIDs; the file meta (which our SCP writes from the
    # C-STORE request) still names them.
    meta = getattr(out, "file_meta", None)
    for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(out.get(key, "") or "").strip() and meta is not None and meta.get(meta_key):
            setattr(out, key, str(meta.get(meta_key)))
    return out
