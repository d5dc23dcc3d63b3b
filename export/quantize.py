"""INT8 variants of the bundle's encoders (ONNX Runtime dynamic quantisation), kept only if zero-shot AUROC holds.

`totalfm export int8 BUNDLE --pairs DATASET [--tolerance 0.01]`

* organ_encoder / text_encoder: `onnxruntime.quantization.quantize_dynamic` (int8 weights, per-channel, activations
  quantised at run time) of MatMul/Gemm - the transformer's weight mass - and, for the text encoder, Gather. Conv3d (the ViT's tubelet embedding, the
  U-Net) stays fp32: ORT's dynamic ConvInteger has no fast 3D kernel, so quantising it is slower, not faster.
* Gate: zero-shot macro AUROC on the pair dataset's TEST split (truth labels) with the int8 graph must stay within
  `tolerance` of the fp32 graph (same crops, same prompts). For the organ encoder the bundle's fp32 prompt embeddings
  are used; for the text encoder the prompts are re-embedded with the int8 text graph. A variant that fails the gate
  (or cannot be measured: no test split) is deleted and not listed. Every measurement, kept or not, plus latency and
  speed-up on 2 threads, goes into manifest provenance["int8"].
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from appliance.bundle import load_bundle
from export.bundle_build import load_tokenizer, text_embeddings, update_manifest
from export.onnx_export import ort_session

TOLERANCE = 0.01
# Gather (the word-embedding table, half of MiniLM's bytes) is quantised for the text encoder: it shrinks the file
# ~4x, which is what keeps a bundle with a real text tower near the 25 MB aim.
OP_TYPES = {"organ_encoder": ("MatMul", "Gemm"), "text_encoder": ("MatMul", "Gemm", "Gather")}


def quantize_dynamic_int8(src: str | Path, dst: str | Path, op_types=("MatMul", "Gemm")) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # symbolic pass chokes on dynamo graphs
        srcq = pre
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantise the plain graph instead
        srcq = Path(src)
    quantize_dynamic(str(srcq), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=list(op_types))
    if pre.exists():
        pre.unlink()
    dst.chmod(0o644)
    return dst


# ------------------------------------------------------------------------------------------------- zero-shot AUROC


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties; NaN if one class is missing."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def _finding_probs(emb: np.ndarray, findings, prompts: np.ndarray, logit_scale: float) -> dict[str, np.ndarray]:
    """Per crop and finding: the appliance's own score (appliance.scoring: sigmoid(mean pos logit - mean neg logit)).

    Scored per organ crop (each crop against the findings of its organ), so the max-over-organs step of
    appliance.scoring.finding_scores does not apply here."""
    from appliance.scoring import finding_logit, sigmoid

    return {f.name: sigmoid(finding_logit(emb, prompts[f.pos_index], prompts[f.neg_index], logit_scale,
                                          getattr(f, "score", "pair"))) for f in findings}


def test_set(dataset: str | Path, input_shape, split: str = "test", limit: int | None = None,
             n_measurements: int = 0):
    """Real runtime inputs from a pair dataset: (encoder feeds {"crop" [N,1,d,h,w], "organ_index" [N][,
    "measurements" [N,K]]}, organs [N], truth rows). The bank code is the trainer's, so the crops and measurements
    are the ones the model was evaluated on."""
    from trainer.model.data import from_pairs

    bank = from_pairs(dataset, input_shape, splits=(split,), limit=limit, with_labels=True,
                      measurements=int(n_measurements))
    if not len(bank):
        raise SystemExit(f"{dataset} has no usable {split} crops; build one (`totalfm synth --seed 2000 ...` then "
                         f"`totalfm train build-pairs`)")
    from appliance import ontology

    feeds = {"crop": np.stack(bank.x).astype(np.float32), "organ_index": np.asarray(bank.organ, np.int64)}
    if n_measurements:
        feeds["measurements"] = np.stack(bank.m).astype(np.float32)
    organs = [ontology.ORGAN_NAMES[i] for i in bank.organ]
    truth = [lab or {"abnormal": False, "findings": []} for lab in bank.labels]
    return feeds, organs, truth


def embed(session, feeds: dict[str, np.ndarray], batch: int = 8) -> np.ndarray:
    n = len(feeds["crop"])
    return np.concatenate([session.run(["embedding"], {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def zero_shot_auroc(emb: np.ndarray, organs: list[str], truth: list[dict], findings, prompts, logit_scale) -> dict:
    per = {}
    organs_arr = np.asarray(organs)
    probs = _finding_probs(emb, findings, prompts, logit_scale)
    for f in findings:
        fo = f.organs or [f.organ]
        sel = np.isin(organs_arr, fo)
        if sel.sum() < 2:
            continue
        if f.name == f"{f.organ}_abnormal":
            y = np.array([truth[i]["abnormal"] for i in np.flatnonzero(sel)])
        else:
            y = np.array([f.name in truth[i]["findings"] for i in np.flatnonzero(sel)])
        a = auroc(probs[f.name][sel], y)
        if not np.isnan(a):
            per[f.name] = a
    macro = float(np.mean(list(per.values()))) if per else float("nan")
    return {"macro_auroc": macro, "n_findings": len(per), "per_finding": per}


def latency_ms(session, feeds: dict, repeat: int = 10) -> float:
    session.run(None, feeds)
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, feeds)
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def add_int8_variants(bundle_dir: str | Path, dataset: str | Path | None, *, tolerance: float = TOLERANCE,
                      split: str = "test", limit: int | None = None, threads: int = 2, log=print) -> dict:
    b = load_bundle(bundle_dir)
    root = Path(b.root)
    findings = b.findings
    prompts = b.prompt_embeddings
    report: dict = {"tolerance": tolerance, "split": split, "dataset": str(dataset) if dataset else None,
                    "threads": threads, "models": {}}
    enc = b.model("organ_encoder")
    shape = enc.preprocessing["input_shape"]
    n_meas = int(enc.preprocessing.get("n_measurements", 0))
    data = None
    if dataset:
        data = test_set(dataset, shape, split, limit, n_meas)
        log(f"int8 gate on {len(data[0]['crop'])} {split} crops from {dataset}")
    fp32_enc = ort_session(enc.path, threads)
    base = None
    if data is not None:
        emb32 = embed(fp32_enc, data[0])
        base = zero_shot_auroc(emb32, data[1], data[2], findings, prompts, b.logit_scale)
        report["fp32"] = {"macro_auroc": base["macro_auroc"], "n_findings": base["n_findings"]}
    kept = {}
    for name in ("organ_encoder", "text_encoder"):
        if name not in b.model_names():
            continue
        spec = b.model(name)
        rel = Path(spec.path).relative_to(root).with_suffix(".int8.onnx")
        dst = root / rel
        t0 = time.perf_counter()
        ops = OP_TYPES[name]
        quantize_dynamic_int8(spec.path, dst, ops)
        entry: dict = {"file": str(rel), "method": f"onnxruntime quantize_dynamic int8 ({'/'.join(ops)}, per-channel)",
                       "quantize_s": round(time.perf_counter() - t0, 1),
                       "bytes_fp32": Path(spec.path).stat().st_size, "bytes_int8": dst.stat().st_size}
        s32, s8 = ort_session(spec.path, threads), ort_session(dst, threads)
        if name == "organ_encoder":
            from export import real_inputs

            feeds = ({k: v[:4] for k, v in data[0].items()} if data is not None else
                     real_inputs.encoder_batches(shape, batch=4, limit=4, n_measurements=n_meas)[0])
        else:
            tok = load_tokenizer(root / spec.extra["tokenizer"], spec.extra["max_length"])
            from export.bundle_build import tokenize

            ids, mask = tokenize(tok, [p for f in findings[:4] for p in f.positive_prompts])
            feeds = {"input_ids": ids, "attention_mask": mask}
        entry["latency_ms_fp32"] = round(latency_ms(s32, feeds), 2)
        entry["latency_ms_int8"] = round(latency_ms(s8, feeds), 2)
        entry["speedup"] = round(entry["latency_ms_fp32"] / max(entry["latency_ms_int8"], 1e-9), 2)
        entry["batch"] = int(next(iter(feeds.values())).shape[0])
        if base is None:
            entry.update(kept=False, reason="no test split given: AUROC cannot be measured, variant not kept")
        else:
            if name == "organ_encoder":
                emb8 = embed(s8, data[0])
                cos = float(np.min(np.sum(emb8 * emb32, 1)))
                res = zero_shot_auroc(emb8, data[1], data[2], findings, prompts, b.logit_scale)
            else:
                tok = load_tokenizer(root / spec.extra["tokenizer"], spec.extra["max_length"])
                plist = b.provenance.get("prompts") or []
                p8 = text_embeddings(s8, tok, plist)
                cos = float(np.min(np.sum(p8 * prompts, 1)))
                res = zero_shot_auroc(emb32, data[1], data[2], findings, p8, b.logit_scale)
            delta = res["macro_auroc"] - base["macro_auroc"]
            ok = bool(abs(delta) <= tolerance) if not np.isnan(delta) else False
            entry.update(macro_auroc_int8=res["macro_auroc"], macro_auroc_fp32=base["macro_auroc"],
                         delta=delta, min_cosine_vs_fp32=cos, kept=ok,
                         reason="within tolerance" if ok else f"|delta AUROC| {abs(delta):.4f} > {tolerance}")
        log(f"{name}: int8 {entry['speedup']}x faster, kept={entry['kept']} ({entry['reason']})")
        if entry["kept"]:
            kept[name] = str(rel)
        else:
            dst.unlink()
        report["models"][name] = entry

    def edit(m):
        for name, rel in kept.items():
            m["models"][name].setdefault("variants", {})["int8"] = rel
        m.setdefault("provenance", {})["int8"] = report

    update_manifest(root, edit)
    return report


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export int8", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--pairs", help="pair dataset (totalfm train build-pairs) with a test split; without it nothing "
                                   "is kept")
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    rep = add_int8_variants(a.bundle, a.pairs, tolerance=a.tolerance, split=a.split, limit=a.limit,
                            threads=a.threads)
    print(json.dumps(rep, indent=2, default=float))
    return 0
