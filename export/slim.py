"""`totalfm export slim BUNDLE --out DIR`: a small copy of a bundle, for embedding in the package.

Why: the text encoder (all-MiniLM-L6-v2 + our projection) is 91 MB in fp32 and still 59 MB after ONNX Runtime's
dynamic INT8 quantisation, because its 30522 x 384 word-embedding table is read by a GatherND that the quantiser
leaves alone. That table is 47 MB of the 59. Here it is stored as uint8 with a per-row scale and offset (rows are
independent word vectors, so per-row ranges lose far less than one global range) and de-quantised after the gather,
which only touches the rows of the tokens in the batch.

The slim text encoder only serves `totalfm query` and admin-added prompts: the catalogue's prompt embeddings in the
bundle stay the fp32 ones computed at export. Gates: the bundle must already carry an INT8 text encoder variant,
which the exporter keeps only if zero-shot AUROC on the test split stays within 0.01 of fp32 (`totalfm export
int8`); the slim model (INT8 + uint8 table) is then accepted only if its prompt embeddings stay within
``MIN_COSINE`` of the fp32 ones (min over every catalogue prompt). Its cosine vs the INT8 variant is reported too:
dynamic INT8 re-quantises activations per batch, so a tiny change upstream moves it more than the table's own error. Measured on
the first real bundle (275 prompts): the uint8 table alone costs nothing (min cosine 0.99997); the INT8 MatMuls
cost the rest (min 0.977-0.984 vs fp32, AUROC unchanged within 0.01). Size: 91 MB fp32 -> 24 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from appliance.bundle import load_bundle
from export.bundle_build import load_tokenizer, text_embeddings, update_manifest
from export.quantize import ort_session

MIN_COSINE = 0.97
MIN_ROWS = 10000  # only vocabulary-sized tables are worth it


def quantize_embedding_tables(src: str | Path, dst: str | Path) -> list[dict]:
    """Store every vocabulary-sized float initializer read by Gather/GatherND as uint8 rows + per-row scale/min."""
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done = []
    new_nodes = []
    for node in g.node:
        name = node.input[0] if node.input else None
        t = inits.get(name)
        if (node.op_type not in ("Gather", "GatherND") or t is None or len(t.dims) != 2 or t.dims[0] < MIN_ROWS
                or t.data_type != onnx.TensorProto.FLOAT):
            new_nodes.append(node)
            continue
        table = numpy_helper.to_array(t).astype(np.float32)
        lo = table.min(axis=1, keepdims=True)
        scale = np.maximum(table.max(axis=1, keepdims=True) - lo, 1e-12) / 255.0
        q = np.clip(np.rint((table - lo) / scale), 0, 255).astype(np.uint8)
        g.initializer.remove(t)
        g.initializer.extend([numpy_helper.from_array(q, f"{name}_u8"),
                              numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                              numpy_helper.from_array(lo.astype(np.float32), f"{name}_min")])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out, idx = node.output[0], node.input[1]
        new_nodes += [
            helper.make_node(node.op_type, [f"{name}_u8", idx], [f"{out}_q"], **attrs),
            helper.make_node(node.op_type, [f"{name}_scale", idx], [f"{out}_s"], **attrs),
            helper.make_node(node.op_type, [f"{name}_min", idx], [f"{out}_m"], **attrs),
            helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{out}_f", f"{out}_s"], [f"{out}_fs"]),
            helper.make_node("Add", [f"{out}_fs", f"{out}_m"], [out]),
        ]
        err = float(np.abs(q * scale + lo - table).max())
        done.append({"initializer": name, "shape": list(t.dims), "max_abs_error": err})
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.save(model, str(dst))
    return done


def slim_bundle(src: str | Path, out: str | Path, *, threads: int = 2, log=print) -> dict:
    """Write the slim copy of ``src`` to ``out``. It is built in a temporary folder beside ``out`` and swapped in
    only when every gate passes, so a refused slim leaves an existing ``out`` (the embedded bundle) untouched."""
    src, out = Path(src), Path(out)
    b = load_bundle(src)
    spec = b.model("text_encoder")
    base = spec.variants.get("int8")
    if base is None:
        raise SystemExit("the bundle has no INT8 text encoder that passed the AUROC gate; run `totalfm export int8 "
                         "BUNDLE --pairs DATASET` first; nothing written")
    if not b.provenance.get("prompts"):
        raise SystemExit("bundle provenance has no prompt list; cannot measure the slim text encoder")
    work = out.parent / f".{out.name}.slim-tmp"
    if work.exists():
        shutil.rmtree(work)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, work)
    try:
        report = _slim_into(b, spec, base, work, threads, log)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return report


def _slim_into(b, spec, base, out: Path, threads: int, log) -> dict:
    rel_fp32 = Path(spec.path).relative_to(b.root)
    tmp_int8 = out / rel_fp32.with_suffix(".tmp-int8.onnx")
    shutil.copyfile(base, tmp_int8)
    rel_slim = rel_fp32.with_suffix(".slim.onnx")
    tables = quantize_embedding_tables(tmp_int8, out / rel_slim)
    prompts = b.provenance["prompts"]
    tok = load_tokenizer(b.root / spec.extra["tokenizer"], spec.extra["max_length"])
    emb = text_embeddings(ort_session(out / rel_slim, threads), tok, prompts)
    emb_int8 = text_embeddings(ort_session(tmp_int8, threads), tok, prompts)
    tmp_int8.unlink()
    cos = np.sum(emb * b.prompt_embeddings, axis=1)
    cos8 = np.sum(emb * emb_int8, axis=1)
    report = {"text_encoder": {"file": str(rel_slim), "tables": tables, "n_prompts": len(prompts),
                               "base": "int8 variant (passed the AUROC gate)",
                               "min_cosine_vs_int8_prompts": float(cos8.min()),
                               "min_cosine_vs_fp32_prompts": float(cos.min()),
                               "mean_cosine_vs_fp32_prompts": float(cos.mean()),
                               "bytes_fp32": Path(spec.path).stat().st_size,
                               "bytes_slim": (out / rel_slim).stat().st_size}}
    log(json.dumps(report, indent=1))
    if cos.min() < MIN_COSINE:
        raise SystemExit(f"slim text encoder too far from fp32 (min cosine {cos.min():.4f} < {MIN_COSINE}); "
                         "nothing written")
    # Remove the fp32 text encoder and its variants from the copy; the slim one becomes the model file.
    for p in [rel_fp32, *(Path(v).relative_to(b.root) for v in spec.variants.values())]:
        (out / p).unlink(missing_ok=True)

    def edit(m):
        m["models"]["text_encoder"]["file"] = str(rel_slim)
        m["models"]["text_encoder"]["variants"] = {}
        m["files"] = {k: v for k, v in m["files"].items() if (out / k).is_file()}
        m.setdefault("provenance", {})["slim"] = report

    update_manifest(out, edit)
    return report


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export slim", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    slim_bundle(a.bundle, a.out, threads=a.threads)
    total = sum(f.stat().st_size for f in Path(a.out).rglob("*") if f.is_file())
    print(f"slim bundle {a.out}: {total / 1e6:.1f} MB")
    return 0
