"""Write a Study to disk: DICOM CT series, NIfTI image and labels, report text, truth JSON, optional PNG preview."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from appliance.nifti_io import write_nifti
from trainer.synth.study import Study


def _uid(seed: int, index: int, what: str) -> str:
    """Deterministic DICOM UID from the study seed (2.25 + decimal of a hash: valid, unique per study)."""
    h = int(hashlib.sha256(f"totalfm-synth/{seed}/{index}/{what}".encode()).hexdigest()[:30], 16)
    return f"2.25.{h}"


def dicom_writer():
    """appliance.dicom_write.write_ct_series when that module is installed, else None."""
    try:
        return importlib.import_module("appliance.dicom_write").write_ct_series
    except ModuleNotFoundError:
        return None


def write_study(study: Study, out_dir: str | Path, *, compress: bool = False, preview: bool = False,
                dicom: bool = True) -> dict:
    """Write one study into ``out_dir`` and return {what: path}; DICOM is skipped (and said so) when the writer is
    not installed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = study.truth
    paths: dict[str, str] = {}
    paths["image_nifti"] = str(write_nifti(study.image, out / "ct.nii.gz"))
    paths["labels_nifti"] = str(write_nifti(study.labels, out / "labels.nii.gz"))
    (out / "report.txt").write_text(study.report.text)
    paths["report"] = str(out / "report.txt")
    if dicom:
        writer = dicom_writer()
        if writer is None:
            paths["dicom"] = "skipped: appliance.dicom_write is not installed in this version"
        else:
            pid = f"SYN{t['seed']:06d}{t['index']:05d}"
            files = writer(study.image, out / "dicom", study_uid=_uid(t["seed"], t["index"], "study"),
                           series_uid=_uid(t["seed"], t["index"], "series"), patient_id=pid,
                           patient_name=f"SYNTH^{pid}", accession=pid[-16:],
                           series_description=f"synthetic {t['kind']} {t['phase']}",
                           compress=True if compress else None)
            paths["dicom"] = str(out / "dicom")
            paths["dicom_files"] = str(len(files))
    if preview:
        from trainer.synth.preview import write_preview
        title = f"synthetic {t['kind']} seed {t['seed']}/{t['index']} {t['phase']} {t['sex']} {t['age']}y"
        paths["preview"] = str(write_preview(out / "preview.png", study.image.array, study.labels.array,
                                             study.image.spacing, study.report.text, title))
    (out / "truth.json").write_text(json.dumps({**t, "files": paths}, indent=1, sort_keys=True))
    paths["truth"] = str(out / "truth.json")
    return paths
