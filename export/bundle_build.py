"""Write a model bundle (format: appliance/bundle.py) from torch modules.

build_bundle(out_dir, segmentation=(module, preprocessing), organ_encoder=(module, meta),
             text_encoder=(module, tokenizer_json, max_length), thresholds=..., logit_scale=..., provenance=...)

Every model is exported with the dynamo exporter (opset 18, dynamic batch), optimised by ONNX Runtime, and checked
against torch on the inputs given in `parity_inputs` (real crops in `totalfm export bundle`); a failed parity check
raises ParityError and nothing is written. Prompt embeddings of every finding's positive and negative prompts are
computed at export time with the EXPORTED text encoder (the same ONNX graph the appliance runs for free-text queries),
so prompt and query embeddings live in the same space bit-for-bit.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from appliance import ontology
from appliance.bundle import FORMAT, FORMAT_VERSION, load_bundle, write_manifest
from export import parity as _parity
from export.onnx_export import export_onnx, io_signature, ort_session

SEG_FILE = "models/segmentation.onnx"
ENC_FILE = "models/organ_encoder.onnx"
TXT_FILE = "models/text_encoder.onnx"
TOKENIZER_FILE = "text/tokenizer.json"
PROMPTS_FILE = "prompts/prompt_embeddings.npy"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:  # not a checkout (installed wheel)
        return "unknown"


def load_tokenizer(tokenizer_json: str | Path, max_length: int):
    """tokenizers.Tokenizer with truncation at max_length and padding to the longest text of a batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def tokenize(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids int64 [B,T], attention_mask int64 [B,T] (appliance.text does the same with the bundle's file)."""
    enc = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def text_embeddings(session, tokenizer, texts: list[str], batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(texts), batch):
        ids, mask = tokenize(tokenizer, texts[i:i + batch])
        out.append(session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0])
    e = np.concatenate(out).astype(np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def prompt_table() -> tuple[list[str], list[dict]]:
    """Unique prompt list and per-finding rows with pos_index/neg_index into it (ontology order)."""
    prompts: list[str] = []
    index: dict[str, int] = {}

    def idx(p: str) -> int:
        if p not in index:
            index[p] = len(prompts)
            prompts.append(p)
        return index[p]

    rows = []
    for f in ontology.FINDINGS:
        rows.append({
            "name": f.name, "organ": f.organs[0], "organs": list(f.organs),
            "positive_prompts": list(f.positive_prompts), "negative_prompts": list(f.negative_prompts),
            "pos_index": [idx(p) for p in f.positive_prompts], "neg_index": [idx(p) for p in f.negative_prompts],
            "any_abnormality": f.any_abnormality,
        })
    return prompts, rows


def random_batches(kind: str, shape: list[int], n_organs: int = len(ontology.ORGANS), seed: int = 0,
                   n_measurements: int = 0, batch: int = 2) -> list[dict[str, np.ndarray]]:
    """One seeded random batch of model feeds: where no real inputs exist (export parity, a bare GPU host)."""
    rng = np.random.default_rng(seed)
    if kind == "segmentation":
        return [{"image": rng.standard_normal((batch, 1, *shape)).astype(np.float32)}]
    feeds = {"crop": rng.random((batch, 1, *shape), dtype=np.float32),
             "organ_index": rng.integers(0, n_organs, batch).astype(np.int64)}
    if n_measurements:
        feeds["measurements"] = rng.random((batch, n_measurements), dtype=np.float32)
    return [feeds]


def encoder_inputs(n_measurements: int) -> list[str]:
    """The organ encoder graph's input names: crop and organ_index, plus the organ measurements when it takes them."""
    return ["crop", "organ_index"] + (["measurements"] if n_measurements else [])


def export_segmentation(seg_mod, seg_pre: dict, work: Path, parity_batches=None, *, log=lambda s: None):
    """The U-Net -> ``work``/SEG_FILE (ONNX, dynamic batch) -> (manifest model entry, parity against torch)."""
    import torch

    patch = [int(x) for x in seg_pre["patch_size"]]
    log(f"exporting segmentation (patch {patch})")
    ex = torch.zeros((2, 1, *patch), dtype=torch.float32)
    export_onnx(seg_mod, (ex,), work / SEG_FILE, input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}})
    batches = parity_batches or random_batches("segmentation", patch)
    par = _parity.segmentation_parity("segmentation", seg_mod, ort_session(work / SEG_FILE), batches)
    ins, outs = io_signature(work / SEG_FILE)
    return {"file": SEG_FILE, "variants": {"fp32": SEG_FILE}, "inputs": ins, "outputs": outs,
            "preprocessing": dict(seg_pre), "extra": {}}, par


def _rebuild_in_place(root: Path, change: Callable[[Path], dict], tag: str) -> dict:
    """Let ``change`` edit a copy of the bundle at ``root`` (it returns the copy's manifest, loaded by the appliance's
    own loader), then swap the copy in by renames. Why: a failure leaves the old bundle as it was, and a crash between
    the two renames leaves it whole beside the folder, as ``.<name>.old-<tag>``."""
    work = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root.parent))
    try:
        shutil.copytree(root, work, dirs_exist_ok=True)
        manifest = change(work)
        retired = root.with_name(f".{root.name}.old-{tag}")
        root.rename(retired)
        work.rename(root)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def replace_segmentation(bundle_dir: str | Path, seg_mod, seg_pre: dict, *, checkpoint: str, metrics: dict,
                         parity_batches=None, bundle_id: str | None = None, log=lambda s: None) -> dict:
    """Put a retrained segmenter into an existing bundle; the encoders, prompts and thresholds stay as they are.

    Why: a site fine-tunes the segmenter alone (`seg-train --init BUNDLE`), and the encoder checkpoints behind a
    bundle may not exist on that machine. The new graph must pass parity and the appliance's loader before it is
    swapped in (``_rebuild_in_place``). TensorRT engines of the old segmenter are dropped (they would run the old
    weights); the bundle gets a new id, because results in the store name the bundle that made them."""
    root = Path(bundle_dir).resolve()
    old = load_bundle(root)
    dropped = [e.key for e in old.engines("segmentation")]  # Bundle.engines reads both manifest forms
    digest = []

    def change(work: Path) -> dict:
        entry, par = export_segmentation(seg_mod, seg_pre, work, parity_batches, log=log)
        _parity.require([par])
        digest.append(hashlib.sha256((work / SEG_FILE).read_bytes()).hexdigest()[:8])

        def edit(m):
            m["models"]["segmentation"] = entry
            for e in old.engines("segmentation"):
                m["tensorrt"].pop(e.key)
                (work / e.path.relative_to(old.root)).unlink(missing_ok=True)
            prov = m.setdefault("provenance", {})
            prov.setdefault("parity", {})["segmentation"] = par.as_dict()
            prov.setdefault("metrics", {})["segmentation"] = metrics
            prov["segmentation_checkpoint"] = str(checkpoint)
            prov["segmentation_replaced"] = {"previous_bundle_id": old.bundle_id, "dropped_tensorrt": dropped}
            m["bundle_id"] = bundle_id or f"{old.bundle_id}-seg-{digest[0]}"
            m["created"] = _now()

        return update_manifest(work, edit)

    manifest = _rebuild_in_place(root, change, hashlib.sha256(repr(seg_pre).encode()).hexdigest()[:8])
    log(f"bundle {manifest['bundle_id']} at {root}: segmentation replaced ({'; '.join(dropped) or 'no engines'} "
        f"dropped)")
    return manifest


def replace_thresholds(bundle_dir: str | Path, thresholds: dict[str, float], *, calibration: dict, metrics: dict,
                       score_rules: dict[str, str] | None = None, prompt_thresholds: dict[str, float] | None = None,
                       bundle_id: str | None = None, log=lambda s: None) -> dict:
    """New per-finding thresholds (and the metrics measured with them) into an existing bundle; every model, prompt
    and TensorRT engine stays (no weight changes). The bundle gets a new id, because the same study now gets other
    calls. ``calibration``: where the thresholds come from (recorded in provenance with the changed values).
    ``score_rules`` / ``prompt_thresholds``: the rule each given threshold was calibrated under, and the "organ"
    findings' own prompt thresholds (both default to what the bundle has)."""
    root = Path(bundle_dir).resolve()
    old = load_bundle(root)
    rules, prompt_thr = dict(score_rules or {}), dict(prompt_thresholds or {})
    unknown = sorted((set(thresholds) | set(rules) | set(prompt_thr)) - {f.name for f in old.findings})
    if unknown:
        raise ValueError(f"thresholds for findings the bundle does not have: {', '.join(unknown)}")
    for f in old.findings:
        if rules.get(f.name, f.score) == "organ" and f.name not in prompt_thr and f.prompt_threshold is None:
            raise ValueError(f"{f.name}: rule 'organ' needs its prompt threshold")
    digest = hashlib.sha256(json.dumps([sorted(thresholds.items()), sorted(rules.items()),
                                        sorted(prompt_thr.items())]).encode()).hexdigest()[:8]
    changed = {f.name: [f.threshold, float(thresholds[f.name])] for f in old.findings
               if f.name in thresholds and float(thresholds[f.name]) != f.threshold}
    changed_rules = {f.name: [f.score, rules[f.name]] for f in old.findings if rules.get(f.name, f.score) != f.score}
    changed_prompt = {f.name: [f.prompt_threshold, float(prompt_thr[f.name])] for f in old.findings
                      if f.name in prompt_thr and float(prompt_thr[f.name]) != f.prompt_threshold}

    def change(work: Path) -> dict:
        def edit(m):
            for r in m["findings"]:
                r["threshold"] = float(thresholds.get(r["name"], r["threshold"]))
                r["score"] = rules.get(r["name"], r.get("score", "pair"))
                if r["name"] in prompt_thr:
                    r["prompt_threshold"] = float(prompt_thr[r["name"]])
                if r["score"] != "organ":
                    r.pop("prompt_threshold", None)
            prov = m.setdefault("provenance", {})
            prov.setdefault("metrics", {})["encoder"] = metrics
            prov["calibration"] = {**calibration, "previous_bundle_id": old.bundle_id, "changed": changed,
                                   "changed_score_rules": changed_rules, "changed_prompt_thresholds": changed_prompt}
            m["bundle_id"] = bundle_id or f"{old.bundle_id}-cal-{digest}"
            m["created"] = _now()

        return update_manifest(work, edit)

    manifest = _rebuild_in_place(root, change, digest)
    log(f"bundle {manifest['bundle_id']} at {root}: {len(changed)} of {len(old.findings)} thresholds, "
        f"{len(changed_prompt)} prompt thresholds and {len(changed_rules)} score rules changed")
    return manifest


def build_bundle(
    out_dir: str | Path,
    *,
    segmentation: tuple[Any, dict] | None,
    organ_encoder: tuple[Any, dict],
    text_encoder: tuple[Any, str | Path, int],
    thresholds: dict[str, float] | float = 0.5,
    score_rules: dict[str, str] | None = None,
    prompt_thresholds: dict[str, float] | None = None,
    logit_scale: float,
    provenance: dict | None = None,
    bundle_id: str | None = None,
    bundle_version: str = "1",
    parity_inputs: dict[str, list[dict[str, np.ndarray]]] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> Path:
    """Export the modules, check parity, compute prompt embeddings and write a verified bundle into out_dir.

    segmentation: (module(image[B,1,D,H,W]) -> logits[B,C,D,H,W], preprocessing dict per the spec incl. patch_size),
                  or None for a bundle without a segmenter (the appliance then needs another segmentation model).
    organ_encoder: (module(crop[B,1,d,h,w], organ_index[B][, measurements[B,K]]) -> embedding[B,E], meta with
                   "input_shape" [d,h,w] and optionally "preprocessing"/"extra" dicts; preprocessing
                   "n_measurements" K > 0 adds the measurements input).
    text_encoder: (module(input_ids[B,T], attention_mask[B,T]) -> embedding[B,E], tokenizer.json path, max_length).
    """
    import torch

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    parity_inputs = dict(parity_inputs or {})
    results: list[_parity.ParityResult] = []
    models: dict[str, dict] = {}
    try:
        # ---- segmentation
        if segmentation is not None:
            models["segmentation"], par = export_segmentation(*segmentation, work, parity_inputs.get("segmentation"),
                                                              log=log)
            results.append(par)

        # ---- organ encoder
        enc_mod, enc_meta = organ_encoder
        shape = [int(x) for x in enc_meta["input_shape"]]
        n_meas = int(dict(enc_meta.get("preprocessing", {})).get("n_measurements", 0))
        log(f"exporting organ encoder (input {shape}{f', {n_meas} measurements' if n_meas else ''})")
        ex = (torch.zeros((2, 1, *shape), dtype=torch.float32), torch.tensor([0, 1], dtype=torch.int64))
        if n_meas:  # random rows, not zeros: a zero example would pass a graph that ignores the standardisation
            ex = ex + (torch.rand((2, n_meas), dtype=torch.float32),)
        names = encoder_inputs(n_meas)
        export_onnx(enc_mod, ex, work / ENC_FILE, input_names=names, output_names=["embedding"],
                    dynamic_axes={n: {0: "batch"} for n in names})
        batches = parity_inputs.get("organ_encoder") or random_batches("organ_encoder", shape,
                                                                        n_measurements=n_meas)
        results.append(_parity.embedding_parity("organ_encoder", enc_mod, ort_session(work / ENC_FILE), batches))
        ins, outs = io_signature(work / ENC_FILE)
        pre = {"input_shape": shape, **dict(enc_meta.get("preprocessing", {}))}
        extra = {"organs": list(ontology.ORGAN_NAMES), **dict(enc_meta.get("extra", {}))}
        models["organ_encoder"] = {"file": ENC_FILE, "variants": {"fp32": ENC_FILE}, "inputs": ins, "outputs": outs,
                                   "preprocessing": pre, "extra": extra}

        # ---- text encoder + tokenizer
        txt_mod, tok_json, max_length = text_encoder
        (work / TOKENIZER_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tok_json, work / TOKENIZER_FILE)
        tok = load_tokenizer(work / TOKENIZER_FILE, int(max_length))
        prompts, rows = prompt_table()
        log(f"exporting text encoder (max_length {max_length}); {len(prompts)} prompts")
        ids, mask = tokenize(tok, prompts[:2])
        export_onnx(txt_mod, (torch.from_numpy(ids), torch.from_numpy(mask)), work / TXT_FILE,
                    input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                    dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
        txt_sess = ort_session(work / TXT_FILE)
        tb = parity_inputs.get("text_encoder")
        if not tb:
            tb = []
            for i in range(0, len(prompts), 32):
                ids, mask = tokenize(tok, prompts[i:i + 32])
                tb.append({"input_ids": ids, "attention_mask": mask})
        results.append(_parity.embedding_parity("text_encoder", txt_mod, txt_sess, tb))
        ins, outs = io_signature(work / TXT_FILE)
        models["text_encoder"] = {"file": TXT_FILE, "variants": {"fp32": TXT_FILE}, "inputs": ins, "outputs": outs,
                                  "preprocessing": {},
                                  "extra": {"tokenizer": TOKENIZER_FILE, "max_length": int(max_length),
                                            "padding": "longest", "truncation": True, "pad_token": "[PAD]"}}
        _parity.require(results)
        for r in results:
            log(f"parity {r.model}: {r.metric} = {r.value:.6f} (>= {r.threshold}, n={r.n})")

        # ---- prompt embeddings with the exported graph
        emb = text_embeddings(txt_sess, tok, prompts)
        (work / PROMPTS_FILE).parent.mkdir(parents=True, exist_ok=True)
        np.save(work / PROMPTS_FILE, emb)
        for r in rows:
            r["threshold"] = float(thresholds.get(r["name"], 0.5) if isinstance(thresholds, dict) else thresholds)
            r["score"] = (score_rules or {}).get(r["name"], "pair")  # the rule the threshold was calibrated under
            if r["score"] == "organ":  # its own prompts' threshold, one of the organ's reasons (appliance.scoring)
                if r["name"] not in (prompt_thresholds or {}):
                    raise ValueError(f"{r['name']} is scored by rule 'organ' but has no prompt threshold; evaluate "
                                     "the checkpoint again (`totalfm train eval`)")
                r["prompt_threshold"] = float(prompt_thresholds[r["name"]])

        prov = dict(provenance or {})
        prov.setdefault("trainer_git_commit", git_commit())
        prov["parity"] = {r.model: r.as_dict() for r in results}
        prov["prompts"] = prompts
        created = _now()
        if bundle_id is None:
            h = hashlib.sha256()
            for rel in sorted(p for p in (SEG_FILE, ENC_FILE, TXT_FILE, PROMPTS_FILE) if (work / p).exists()):
                h.update((work / rel).read_bytes())
            bundle_id = f"totalfm-{h.hexdigest()[:12]}"
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "bundle_id": bundle_id, "bundle_version": str(bundle_version), "created": created,
            "ontology": {"version": ontology.ONTOLOGY_VERSION, "fingerprint": ontology.ontology_fingerprint()},
            "organs": list(ontology.ORGAN_NAMES),
            "models": models,
            "findings": rows,
            "prompt_embeddings": PROMPTS_FILE,
            "logit_scale": float(logit_scale),
            "files": {},
            "provenance": prov,
            "tensorrt": {},
            "disclaimer": "AI draft for radiologist review - not a diagnosis",
        }
        write_manifest(work, manifest)
        load_bundle(work)  # the appliance's own loader must accept it
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    log(f"bundle {bundle_id} written to {out}")
    return out


def update_manifest(bundle_dir: str | Path, fn: Callable[[dict], None]) -> dict:
    """Load the manifest, let fn edit it in place, recompute hashes, write it back (after adding variants/engines)."""
    root = Path(bundle_dir)
    manifest = json.loads((root / "manifest.json").read_text())
    fn(manifest)
    write_manifest(root, manifest)
    load_bundle(root)
    return manifest
