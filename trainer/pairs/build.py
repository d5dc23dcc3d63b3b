"""build_pairs: studies (image + report [+ label map]) -> organ crops paired with the report sentences about them.

Per study (in a worker process): read the image (ct.nii.gz or dicom/), get a label map (the study's labels.nii.gz,
TotalSegmentator, or our U-Net checkpoint), crop every ontology organ with appliance.crops.crop_organs (the exact
preprocessing the appliance uses), parse the report with trainer.reports.parse, then pair:
  positive  each usable organ crop with every positive sentence about that organ;
  normal    an organ with no positive sentence with the report's normal statements about it, or, when the report has
            none, one normal statement synthesised from the ontology (marked synthetic=1).
Crops go to DATASET/crops/<study_key>.npz (written to a temp file, fsynced, renamed); only then does the parent
commit the study's rows to DATASET/index.sqlite in one transaction. So a kill at any moment leaves either the whole
study in the index or none of it; a restart skips committed studies and redoes the rest (deterministically, the npz
is simply rewritten). Exact duplicate images (sha256 of the voxel array + geometry) and unusable studies are recorded
with a reason (status 'duplicate' / 'unusable') and the run goes on.

Splits (never leak a patient): from truth.json, not the folder name: analytic phantoms by run seed (< 1000 train,
1000-1999 val, >= 2000 test); real-backed phantoms by source patient (A = the NIfTI patient -> train, B = the DICOM
patient -> test), except that A-backed studies with a validation seed (1000-1999) go to val: the only real tissue
available for picking thresholds (phantom-only validation left the held-out patient's scores under them, session 21),
and still never test data, since A's scan is in training. A hospital's own studies (no truth.json; `dicom/` +
`report.txt`) are split by patient: the DICOM PatientID becomes a pseudonym (HMAC-SHA256, so the index never
holds the ID) whose hash puts every study of that patient on the same side, ``--holdout`` (default 10 % val,
10 % test) of the patients held out. The key is a file, never in the index (with it, pseudonyms of guessed IDs
could be computed): the site's (``--patient-key FILE``), so that
a rebuilt or later dataset keeps every patient on the same side, else DATASET/patient.key; both are created (0600)
when missing, and only when a run has a hospital study to place (a synthetic-only dataset gets no key file). The
index keeps the key's sha256 and the shares; a resume with another key or other shares is refused, since it could
move a patient across splits. Their evaluation truth is the report's own labels (labels.source
'report'). A study with neither truth.json nor a PatientID stays 'unassigned' (logged): placing it could put one
patient on both sides.
Logs hold reasons and counts, never report text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import multiprocessing as mp
import os
import re
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from appliance.errors import TotalFMError
from appliance.ontology import FINDINGS_BY_NAME, ORGAN_NAMES
from trainer.pairs import index as ix
from trainer.workers import init_worker

log = logging.getLogger(__name__)

SEGMENTERS = ("labels", "totalseg", "unet:<checkpoint>")
ENGINES = ("rules", "llm")
PAIR_SECTIONS = frozenset({"findings", "impression", "body"})  # where positive statements about the patient live
PATIENT_SPLIT = {"A": "train", "B": "test"}
SYNTHETIC_IDX0 = 100_000  # sentence idx of synthesised normal statements (after any real sentence)


# ------------------------------------------------------------------ splits
def seed_split(seed: int) -> str:
    return "train" if seed < 1000 else ("val" if seed < 2000 else "test")


def source_patient_of(truth: dict) -> str | None:
    if truth.get("source_patient"):
        return str(truth["source_patient"])
    from trainer.synth.realbacked import SOURCE_PATIENT
    return SOURCE_PATIENT.get(str(truth.get("source")))


DEFAULT_HOLDOUT = (0.1, 0.1)  # shares of a hospital's patients held out for validation and test


def dicom_patient_id(folder: Path) -> str | None:
    """PatientID of the study's DICOM series (first readable file under ``dicom/``), or None."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    for f in sorted(p for p in (folder / "dicom").rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        pid = str(ds.get("PatientID", "") or "").strip()
        return pid or None
    return None


def is_hospital_study(folder: Path) -> bool:
    """A site's own study (no truth.json at all), split by patient; one place, so the worker that splits it and the
    run that decides whether the pseudonym key is needed agree."""
    return not (folder / "truth.json").exists()


def patient_pseudonym(patient_id: str, key: str) -> str:
    """A stable stand-in for a PatientID in one dataset (keyed, so it cannot be reversed by hashing guessed IDs)."""
    return "p-" + hmac.new(bytes.fromhex(key), patient_id.encode(), hashlib.sha256).hexdigest()[:16]


def pseudonym_split(pseudonym: str, val: float, test: float) -> str:
    """Every study of a patient lands on the same side; about ``val`` / ``test`` of the patients are held out."""
    u = int(hashlib.sha256(pseudonym.encode()).hexdigest()[:12], 16) / float(16 ** 12)
    return "val" if u < val else ("test" if u < val + test else "train")


def patient_and_split(truth: dict | None) -> tuple[str | None, str]:
    """(patient, split) from truth.json; see the module docstring."""
    if not truth:
        return None, "unassigned"
    kind = truth.get("kind")
    if kind == "analytic" and truth.get("seed") is not None:
        return "synthetic", seed_split(int(truth["seed"]))
    if kind == "real-backed":
        p = source_patient_of(truth)
        split = PATIENT_SPLIT.get(p or "", "unassigned")
        if split == "train" and truth.get("seed") is not None and seed_split(int(truth["seed"])) == "val":
            return p, "val"  # the training patient's tissue may calibrate thresholds, never test a model
        return p, split
    return None, "unassigned"


# ------------------------------------------------------------------ per-worker state
_STATE: dict = {}


def _segmenter(spec: str):
    if spec in _STATE.get("seg", {}):
        return _STATE["seg"][spec]
    if spec == "labels":
        fn = None
    elif spec == "totalseg":
        from trainer.segmentation.totalseg_adapter import TotalSegmentatorAdapter
        adapter = TotalSegmentatorAdapter()
        fn = lambda vol: (adapter.segment(vol), "totalseg")  # noqa: E731
    elif spec.startswith("unet:"):
        ckpt = spec[5:]
        from trainer.segmentation.infer_torch import segment_with_checkpoint  # lazy: torch only when asked for

        def fn(vol):
            lab = segment_with_checkpoint(vol, ckpt)
            return lab, str((lab.meta or {}).get("label_space", "organ"))
    else:
        raise TotalFMError(f"unknown segmenter {spec!r}; use one of {', '.join(SEGMENTERS)}")
    _STATE.setdefault("seg", {})[spec] = fn
    return fn


def _labeller(engine: str):
    if engine != "llm":
        return None
    if "llm" not in _STATE:
        from trainer.reports.parse import make_llm_labeller
        _STATE["llm"] = make_llm_labeller()
    return _STATE["llm"]


# ------------------------------------------------------------------ one study
def find_studies(studies_dir: str | Path) -> list[tuple[str, Path]]:
    """(study_key, folder) for every sub-folder that looks like a study, sorted (deterministic order)."""
    root = Path(studies_dir)
    if not root.is_dir():
        raise TotalFMError(f"studies folder {root} does not exist")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if any((d / n).exists() for n in ("ct.nii.gz", "ct.nii", "dicom", "report.txt")):
            out.append((re.sub(r"[^A-Za-z0-9._-]", "_", d.name), d))
    return out


def image_hash(vol) -> str:
    h = hashlib.sha256()
    a = np.ascontiguousarray(vol.array)
    h.update(f"{a.dtype.str}{a.shape}{tuple(np.round(vol.spacing, 4))}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _read_image(folder: Path):
    from appliance.commands.volume_info import load_volume
    for name in ("ct.nii.gz", "ct.nii"):
        if (folder / name).is_file():
            return load_volume(str(folder / name))
    if (folder / "dicom").is_dir():
        return load_volume(str(folder / "dicom"))
    raise TotalFMError("no image (ct.nii.gz or dicom/) in the study folder")


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _truth_labels(truth: dict) -> dict[str, dict]:
    out = {o: {"abnormal": False, "findings": [], "source": "truth"} for o in ORGAN_NAMES}
    for rec in truth.get("findings", []):
        organ = rec.get("organ")
        if organ not in out:
            f = FINDINGS_BY_NAME.get(rec.get("finding"))
            organ = f.organs[0] if f else None
        if organ in out:
            out[organ]["abnormal"] = True
            if rec["finding"] not in out[organ]["findings"]:
                out[organ]["findings"].append(rec["finding"])
    return out


def _report_labels(sentences: list[dict]) -> dict[str, dict]:
    out = {o: {"abnormal": False, "findings": [], "source": "report"} for o in ORGAN_NAMES}
    for s in sentences:
        if s["polarity"] == "positive" and s["organ"] in out and s["section"] in PAIR_SECTIONS:
            out[s["organ"]]["abnormal"] = True
            if s["finding"] and s["finding"] not in out[s["organ"]]["findings"]:
                out[s["organ"]]["findings"].append(s["finding"])
    return out


def synthetic_normal_statement(organ: str) -> str:
    """A normal statement for an organ from the ontology (the any-abnormality finding's negative prompt)."""
    prompts = FINDINGS_BY_NAME[f"{organ}_abnormal"].negative_prompts
    text = prompts[1] if len(prompts) > 1 else prompts[0]
    return text[0].upper() + text[1:] + "."


def process_study(task: tuple) -> dict:
    """Worker: one study folder -> a record for index.commit_study (+ the npz written atomically)."""
    key, folder, out, segmenter, engine, holdout = task  # holdout: (pseudonym key, val share, test share)
    folder, out = Path(folder), Path(out)
    t0 = time.time()
    study = {"study_key": key, "path": str(folder), "patient": None, "kind": None, "seed": None,
             "split": "unassigned", "status": "ok", "reason": "", "image_hash": None, "duplicate_of": None,
             "segmenter": segmenter, "engine": engine, "n_crops": 0, "n_sentences": 0, "n_pairs": 0,
             "disagreements": None, "notes": None, "truth": None, "npz": None, "seconds": None}
    rec: dict = {"study": study, "crops": [], "sentences": [], "pairs": [], "labels": {}, "log": []}

    def unusable(reason: str) -> dict:
        study.update(status="unusable", reason=reason, seconds=round(time.time() - t0, 3))
        rec.update(crops=[], sentences=[], pairs=[], labels={})
        rec["log"].append(("warning", f"unusable: {reason}"))
        return rec

    truth = None
    if (folder / "truth.json").is_file():
        try:
            truth = json.loads((folder / "truth.json").read_text())
        except (OSError, ValueError) as exc:
            rec["log"].append(("warning", f"truth.json unreadable ({type(exc).__name__}); split unassigned"))
    if truth:
        study["patient"], study["split"] = patient_and_split(truth)
        study["kind"], study["seed"] = truth.get("kind"), truth.get("seed")
        keep = {k: truth[k] for k in ("kind", "seed", "index", "source", "source_patient", "phase", "sex", "age",
                                      "normal", "phrasing", "generator_version") if k in truth}
        keep["findings"] = [{k: f.get(k) for k in ("finding", "organ", "severity", "laterality", "size_mm")}
                            for f in truth.get("findings", [])]
        study["truth"] = json.dumps(keep, sort_keys=True)
    elif is_hospital_study(folder):  # split by patient (module docstring)
        pid = dicom_patient_id(folder) if (folder / "dicom").is_dir() else None
        if pid:
            study["patient"] = patient_pseudonym(pid, holdout[0])
            study["split"], study["kind"] = pseudonym_split(study["patient"], *holdout[1:]), "real"
        else:
            rec["log"].append(("warning", "no truth.json and no DICOM PatientID: split unassigned (placing it could "
                                          "put one patient on both sides of a split)"))

    # report
    from trainer.reports.parse import parse_report
    try:
        text = (folder / "report.txt").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return unusable(f"report unreadable: {type(exc).__name__}")
    parsed = parse_report(text, engine=engine, labeller=_labeller(engine), ref=key)
    if not parsed.processable:
        return unusable(parsed.reason)
    if not any(p.sentence.section == "findings" for p in parsed.sentences):
        return unusable("report has no FINDINGS section")
    sentences = [{"idx": i, "text": p.sentence.text, "section": p.sentence.section, "organ": p.label.organ,
                  "polarity": p.label.polarity, "finding": p.label.finding, "phase": p.label.phase,
                  "hedged": p.label.hedged, "synthetic": False, "engine": p.engine,
                  "disagreements": json.dumps(list(p.disagreements)) if p.cross_check is not None else None}
                 for i, p in enumerate(parsed.sentences)]
    if parsed.disagreement_counts:
        study["disagreements"] = json.dumps(parsed.disagreement_counts, sort_keys=True)
    study["notes"] = json.dumps(parsed.notes) if parsed.notes else None

    # image + labels
    try:
        vol = _read_image(folder)
    except Exception as exc:  # nibabel/pydicom raise many types; the study is recorded, the run goes on
        return unusable(f"unreadable image: {type(exc).__name__}: {str(exc)[:200]}")
    study["image_hash"] = image_hash(vol)
    try:
        if segmenter == "labels":
            from appliance.nifti_io import read_nifti
            lp = folder / "labels.nii.gz"
            if not lp.is_file():
                return unusable("no labels.nii.gz (segmenter 'labels')")
            labels, space = read_nifti(lp), "totalseg"
            if labels.shape != vol.shape:
                return unusable(f"label map {labels.shape} is not on the image grid {vol.shape}")
        else:
            labels, space = _segmenter(segmenter)(vol)
    except TotalFMError as exc:
        return unusable(f"segmentation failed: {exc}")
    if not np.any(labels.array):
        return unusable("empty label map")
    from appliance.crops import crop_organs
    try:
        cset = crop_organs(vol, labels, label_space=space)
    except TotalFMError as exc:
        return unusable(f"cropping failed: {exc}")
    present = cset.present()
    if not present:
        return unusable("segmentation found no ontology organs")

    arrays = {}
    for organ, c in cset.crops.items():
        stored = c.usable
        if stored:
            arrays[f"{organ}/image"] = c.image.array.astype(np.float16)
            arrays[f"{organ}/mask"] = c.mask.array.astype(np.uint8)
        rec["crops"].append({"organ": organ, "status": c.status, "reason": c.reason,
                             "volume_ml": round(float(c.volume_ml), 3), "voxel_count": int(c.voxel_count),
                             "shape": list(c.image.shape) if stored else None,
                             "spacing": [round(float(s), 4) for s in c.image.spacing] if stored else None,
                             "stored": stored})

    # pairs
    pos = {o: [s for s in sentences if s["organ"] == o and s["polarity"] == "positive"
               and s["section"] in PAIR_SECTIONS] for o in present}
    n_syn = 0
    for organ in present:
        if pos[organ]:
            seen = set()
            for s in pos[organ]:
                if s["text"].lower() not in seen:  # the impression often repeats a finding verbatim
                    seen.add(s["text"].lower())
                    rec["pairs"].append((organ, s["idx"], "positive"))
            continue
        normals = [s for s in sentences if s["organ"] == organ and s["polarity"] == "normal"]
        if not normals:
            idx = SYNTHETIC_IDX0 + n_syn
            n_syn += 1
            syn = {"idx": idx, "text": synthetic_normal_statement(organ), "section": "synthetic", "organ": organ,
                   "polarity": "normal", "finding": None, "phase": None, "hedged": False, "synthetic": True,
                   "engine": "ontology", "disagreements": None}
            sentences.append(syn)
            normals = [syn]
        rec["pairs"] += [(organ, s["idx"], "normal") for s in normals]
    lost = sorted({s["organ"] for s in sentences if s["polarity"] == "positive" and s["organ"]
                   and s["organ"] not in present})
    if lost:
        rec["log"].append(("info", f"positive sentences about organs without a usable crop: {', '.join(lost)}"))
    rec["sentences"] = sentences
    rec["labels"] = _truth_labels(truth) if truth and "findings" in truth else _report_labels(sentences)

    npz = out / "crops" / f"{key}.npz"
    _atomic_npz(npz, arrays)
    study.update(npz=str(npz.relative_to(out)), n_crops=len(present), n_sentences=len(sentences),
                 n_pairs=len(rec["pairs"]), seconds=round(time.time() - t0, 3))
    return rec


def _safe(task: tuple) -> dict:
    try:
        return process_study(task)
    except Exception as exc:  # a bug or odd input in one study must not end a multi-hour run
        key, folder = task[0], task[1]
        return {"study": {"study_key": key, "path": str(folder), "patient": None, "kind": None, "seed": None,
                          "split": "unassigned", "status": "unusable",
                          "reason": f"processing error: {type(exc).__name__}: {str(exc)[:300]}", "image_hash": None,
                          "duplicate_of": None, "segmenter": task[3], "engine": task[4], "n_crops": 0,
                          "n_sentences": 0, "n_pairs": 0, "disagreements": None, "notes": None, "truth": None,
                          "npz": None, "seconds": None},
                "log": [("error", f"processing error: {type(exc).__name__}")]}


# ------------------------------------------------------------------ the run
def read_patient_key(path: str | Path) -> str:
    """The site's pseudonym key from ``path`` (64 hex digits), created (mode 0600) when the file does not exist."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise TotalFMError(f"{path}: not a patient key (64 lowercase hex digits)")
    return key


def _holdout(con, holdout: tuple[float, float] | None, key_file: Path) -> tuple[str, float, float]:
    """(pseudonym key, val share, test share) for this run: the key from ``key_file``, checked against the sha256 the
    index recorded at creation, and the shares recorded then (see the module docstring)."""
    key = read_patient_key(key_file)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    row = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('patient_key_sha256', 'holdout')").fetchall())
    if "holdout" not in row:
        val, test = holdout or DEFAULT_HOLDOUT
        if not (0 <= val and 0 <= test and val + test < 1):
            raise TotalFMError(f"--holdout {val},{test}: shares must be >= 0 and leave some patients for training")
        con.executemany("INSERT INTO meta VALUES (?, ?)", [("patient_key_sha256", fingerprint),
                                                           ("holdout", json.dumps([val, test]))])
        con.commit()
        return key, val, test
    stored = tuple(json.loads(row["holdout"]))
    if holdout is not None and tuple(holdout) != stored:
        raise TotalFMError(f"this dataset holds out {stored[0]:g} / {stored[1]:g} of the patients (val / test); "
                           f"resuming with {holdout[0]:g} / {holdout[1]:g} could move a patient across splits. "
                           "Build a new dataset for other shares")
    if fingerprint != row["patient_key_sha256"]:
        raise TotalFMError(f"this dataset was built with another patient key than {key_file}; resuming with it would "
                           "give its patients other pseudonyms and splits (pass the key it was built with: "
                           "--patient-key)")
    return key, stored[0], stored[1]


def _needs_patient_key(con, pending: list) -> bool:
    """Whether this run needs the pseudonym key: a hospital study (no truth.json) to place, or an index that already
    recorded a key (a resume must then show the same one). Why: a synthetic-only dataset should not get a secret
    file that nobody will keep."""
    if con.execute("SELECT 1 FROM meta WHERE key = 'patient_key_sha256'").fetchone():
        return True
    return any(is_hospital_study(Path(d)) for _, d in pending)


def build_pairs(studies_dir: str | Path, out: str | Path, segmenter: str = "labels", engine: str = "rules",
                workers: int | None = None, *, progress: bool = True, limit: int | None = None,
                holdout: tuple[float, float] | None = None, patient_key: str | Path | None = None) -> dict:
    """Build (or resume) the pair dataset ``out`` from the study folders under ``studies_dir``; returns a summary.
    ``limit``: process at most this many new studies (for trials). ``holdout``: (val, test) shares of a hospital's
    patients (default ``DEFAULT_HOLDOUT``); ``patient_key``: the site's pseudonym key file (module docstring)."""
    if engine not in ENGINES:
        raise TotalFMError(f"unknown report engine {engine!r}; use one of {', '.join(ENGINES)}")
    if not (segmenter in ("labels", "totalseg") or segmenter.startswith("unet:")):
        raise TotalFMError(f"unknown segmenter {segmenter!r}; use one of {', '.join(SEGMENTERS)}")
    if segmenter.startswith("unet:") and not Path(segmenter[5:]).exists():
        raise TotalFMError(f"U-Net checkpoint {segmenter[5:]} not found")
    if engine == "llm":
        _labeller("llm")  # fail fast (LLMUnavailable with its reason) before any worker starts
    workers = max(1, int(workers or os.cpu_count() or 1))
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    for stale in (out / "crops").glob(".*.tmp"):  # half-written npz of a killed run
        stale.unlink()
    con = ix.connect(out / "index.sqlite", create=True)
    studies = find_studies(studies_dir)
    done = ix.done_keys(con)
    pending = [(k, d) for k, d in studies if k not in done]
    key_file = Path(patient_key) if patient_key else out / "patient.key"
    split_rule = _holdout(con, holdout, key_file) if _needs_patient_key(con, pending) else None
    todo = [(k, str(d), str(out), segmenter, engine, split_rule) for k, d in pending]
    if limit is not None:
        todo = todo[:limit]
    run_id = ix.start_run(con, {"studies": str(studies_dir), "segmenter": segmenter, "engine": engine,
                                "workers": workers, "found": len(studies), "already_done": len(done)})
    t0 = time.time()
    counts = {"ok": 0, "unusable": 0, "duplicate": 0}
    disagree: dict[str, int] = {}
    from tqdm import tqdm
    bar = tqdm(total=len(todo), file=sys.stderr, disable=not progress, unit="study", desc="build-pairs")
    pool = mp.get_context("spawn").Pool(workers, initializer=init_worker,
                                                 initargs=(os.getpid(),)) if workers > 1 and len(todo) > 1 else None
    try:
        results = pool.imap(_safe, todo, chunksize=1) if pool else map(_safe, todo)
        for rec in results:  # in study order, so duplicate resolution is the same whatever the worker count
            s = rec["study"]
            if s["status"] == "ok":
                dup = con.execute("SELECT study_key FROM studies WHERE image_hash=? AND status='ok'",
                                  (s["image_hash"],)).fetchone()
                if dup is not None:
                    if s["npz"]:
                        (out / s["npz"]).unlink(missing_ok=True)
                    s.update(status="duplicate", reason=f"exact duplicate image of study {dup[0]}",
                             duplicate_of=dup[0], npz=None, n_crops=0, n_sentences=0, n_pairs=0)
                    rec = {"study": s, "log": [("warning", s["reason"])]}
            ix.commit_study(con, rec, run_id)
            counts[s["status"]] += 1
            for f, n in json.loads(s["disagreements"] or "{}").items():
                disagree[f] = disagree.get(f, 0) + n
            bar.update(1)
            bar.set_postfix(counts, refresh=False)
    finally:
        bar.close()
        if pool:
            pool.terminate()
            pool.join()
    wall = time.time() - t0
    summary = {"found": len(studies), "already_done": len(done), "processed": len(todo), **counts,
               "wall_s": round(wall, 2), "studies_per_min": round(60 * len(todo) / wall, 1) if wall > 0 else None,
               "workers": workers, "segmenter": segmenter, "engine": engine}
    if engine == "llm":
        summary["llm_rule_disagreements"] = disagree
    summary["rows"] = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                       for t in ("studies", "crops", "sentences", "pairs", "labels")}
    ix.finish_run(con, run_id, summary)
    con.close()
    return summary
