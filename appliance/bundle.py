"""The model bundle: one directory with a versioned manifest.json, ONNX models, prompt embeddings and a tokenizer.

The exporter (`export/`) writes bundles; the appliance only reads them, through this module, without torch.

Layout (paths relative to the bundle root, all listed with their sha256 in manifest["files"]):

    manifest.json                      this file is NOT in "files" (it holds the hashes)
    models/segmentation.onnx           (+ models/segmentation.int8.onnx etc. as variants)
    models/organ_encoder.onnx
    models/text_encoder.onnx
    text/tokenizer.json
    prompts/prompt_embeddings.npy      (P, E) float32, L2-normalised rows
    tensorrt/<engine>.plan             optional, built on the target GPU by `totalfm export tensorrt`

manifest.json (format "totalfm-bundle", format_version 1):

    bundle_id, bundle_version, created (ISO-8601 UTC), ontology {version, fingerprint}, organs [names],
    models {name: {file, variants {variant: file}, inputs [{name, shape, dtype}], outputs [...],
                   preprocessing {...}, extra {...}}},
    findings [{name, organ, positive_prompts, negative_prompts, threshold, pos_index, neg_index}],
    prompt_embeddings (file), logit_scale (float, already exp'd),
    files {relpath: sha256}, provenance {recipe, data, metrics, trainer_git_commit, ...},
    tensorrt {engine key: {file, model, gpu, tensorrt_version, precision, profiles}}

Why the checks are strict: a bundle is a medical-device artefact. A changed byte (corruption, hand edit), a file
that is missing, or a bundle built against another ontology (organ or finding list) would silently produce wrong
scores, so loading refuses with a message that names the file or field and says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import OntologyError, TotalFMError
from appliance.scoring import SCORE_RULES

FORMAT = "totalfm-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_NAMES = ("segmentation", "organ_encoder", "text_encoder")
ENV_VAR = "TOTALFM_BUNDLE"


class BundleError(TotalFMError):
    """A model bundle cannot be used: missing/changed file, wrong format or ontology version, unknown model."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path  # the default (fp32) ONNX file; callers pick another entry of `variants` where it suits the host
    variants: dict[str, Path]
    inputs: list[dict]
    outputs: list[dict]
    preprocessing: dict
    extra: dict

    def variant(self, name: str) -> Path:
        try:
            return self.variants[name]
        except KeyError:
            raise BundleError(
                f"model {self.name!r} has no variant {name!r} (available: {', '.join(sorted(self.variants))})"
            ) from None


@dataclass(frozen=True)
class FindingSpec:
    name: str
    organ: str
    threshold: float
    pos_index: list[int]
    neg_index: list[int]
    positive_prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    organs: list[str] = field(default_factory=list)  # every organ crop it is scored in (first == organ)
    score: str = "pair"  # appliance.scoring.SCORE_RULES; bundles before session 9 have no key: "pair"
    prompt_threshold: float | None = None  # rule "organ" only: the threshold of the finding's own prompt pair


@dataclass(frozen=True)
class EngineSpec:
    key: str
    path: Path
    model: str
    gpu: str
    tensorrt_version: str
    precision: str
    profiles: dict


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def engine_key(model: str, gpu_name: str, tensorrt_version: str) -> str:
    """Key of a TensorRT engine in manifest["tensorrt"]: engines are only valid for one GPU model + TRT version."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return f"{model}@{slug}@trt{tensorrt_version}"


def default_bundle_path() -> Path:
    """TOTALFM_BUNDLE if set, else the default bundle embedded in the package (appliance/default_bundle/)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "default_bundle"


class Bundle:
    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.bundle_id: str = manifest["bundle_id"]
        self._prompt_embeddings = None

    def __repr__(self) -> str:
        return f"Bundle({self.bundle_id!r}, root={str(self.root)!r})"

    @property
    def bundle_version(self) -> str:
        return str(self.manifest.get("bundle_version", ""))

    @property
    def organs(self) -> list[str]:
        return list(self.manifest["organs"])

    @property
    def logit_scale(self) -> float:
        return float(self.manifest["logit_scale"])

    @property
    def provenance(self) -> dict:
        return dict(self.manifest.get("provenance", {}))

    def model_names(self) -> list[str]:
        return list(self.manifest["models"])

    def model(self, name: str) -> ModelSpec:
        models = self.manifest["models"]
        if name not in models:
            raise BundleError(
                f"bundle {self.bundle_id} at {self.root} has no model {name!r} (it has: {', '.join(models) or 'none'});"
                f" export a bundle that includes it (`totalfm export bundle ...`)"
            )
        m = models[name]
        variants = {k: self.root / v for k, v in (m.get("variants") or {}).items()}
        variants.setdefault("fp32", self.root / m["file"])
        return ModelSpec(
            name=name,
            path=self.root / m["file"],
            variants=variants,
            inputs=list(m.get("inputs", [])),
            outputs=list(m.get("outputs", [])),
            preprocessing=dict(m.get("preprocessing", {})),
            extra=dict(m.get("extra", {})),
        )

    def file(self, relpath: str) -> Path:
        return self.root / relpath

    @property
    def findings(self) -> list[FindingSpec]:
        return [
            FindingSpec(
                name=f["name"], organ=f["organ"], threshold=float(f["threshold"]),
                pos_index=[int(i) for i in f["pos_index"]], neg_index=[int(i) for i in f["neg_index"]],
                positive_prompts=list(f.get("positive_prompts", [])),
                negative_prompts=list(f.get("negative_prompts", [])),
                organs=list(f.get("organs") or [f["organ"]]),
                score=str(f.get("score", "pair")),
                prompt_threshold=None if f.get("prompt_threshold") is None else float(f["prompt_threshold"]),
            )
            for f in self.manifest["findings"]
        ]

    @property
    def prompt_embeddings(self):
        if self._prompt_embeddings is None:
            import numpy as np

            arr = np.load(self.root / self.manifest["prompt_embeddings"], allow_pickle=False)
            self._prompt_embeddings = np.ascontiguousarray(arr, dtype=np.float32)
        return self._prompt_embeddings

    def engines(self, model: str | None = None) -> list[EngineSpec]:
        out = []
        for key, e in (self.manifest.get("tensorrt") or {}).items():
            if isinstance(e, str):  # tolerate the short form {key: file}
                parts = key.split("@")
                e = {"file": e, "model": parts[0], "gpu": parts[1] if len(parts) > 1 else "",
                     "tensorrt_version": parts[2][3:] if len(parts) > 2 else ""}
            spec = EngineSpec(key=key, path=self.root / e["file"], model=e.get("model", ""), gpu=e.get("gpu", ""),
                              tensorrt_version=str(e.get("tensorrt_version", "")),
                              precision=e.get("precision", "fp16"), profiles=dict(e.get("profiles", {})))
            if model is None or spec.model == model:
                out.append(spec)
        return out

    def engine_for(self, model: str, gpu_name: str, tensorrt_version: str) -> EngineSpec | None:
        key = engine_key(model, gpu_name, tensorrt_version)
        for e in self.engines(model):
            if e.key == key:
                return e
        return None


# --------------------------------------------------------------------------------------------------- validation


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise BundleError(msg)


def _referenced_files(manifest: dict) -> list[tuple[str, str]]:
    """(relpath, which field refers to it) for every file the manifest points at."""
    refs = []
    for name, m in manifest["models"].items():
        refs.append((m["file"], f"models.{name}.file"))
        for v, p in (m.get("variants") or {}).items():
            refs.append((p, f"models.{name}.variants.{v}"))
        tok = (m.get("extra") or {}).get("tokenizer")
        if tok:
            refs.append((tok, f"models.{name}.extra.tokenizer"))
    refs.append((manifest["prompt_embeddings"], "prompt_embeddings"))
    for key, e in (manifest.get("tensorrt") or {}).items():
        refs.append((e if isinstance(e, str) else e["file"], f"tensorrt.{key}"))
    return refs


def validate_manifest(manifest: Any, where: str = MANIFEST) -> None:
    """Structure checks; raise BundleError naming the field."""
    _need(isinstance(manifest, dict), f"{where}: not a JSON object")
    fmt = manifest.get("format")
    _need(fmt == FORMAT, f"{where}: field 'format' is {fmt!r}, expected {FORMAT!r}; this is not a TotalFM model bundle")
    fv = manifest.get("format_version")
    _need(
        fv == FORMAT_VERSION,
        f"{where}: field 'format_version' is {fv!r} but this software reads bundle format {FORMAT_VERSION}; "
        f"re-export the bundle with this software version (`totalfm export bundle ...`)",
    )
    for key, typ in (("bundle_id", str), ("ontology", dict), ("organs", list), ("models", dict), ("findings", list),
                     ("prompt_embeddings", str), ("logit_scale", (int, float)), ("files", dict)):
        _need(key in manifest, f"{where}: required field {key!r} is missing; re-export the bundle")
        _need(isinstance(manifest[key], typ), f"{where}: field {key!r} has the wrong type "
                                              f"({type(manifest[key]).__name__})")
    for name, m in manifest["models"].items():
        _need(isinstance(m, dict) and isinstance(m.get("file"), str),
              f"{where}: models.{name}.file is missing")
        for io in ("inputs", "outputs"):
            for i, t in enumerate(m.get(io, [])):
                _need(isinstance(t, dict) and {"name", "shape", "dtype"} <= set(t),
                      f"{where}: models.{name}.{io}[{i}] needs name, shape and dtype")
    for i, f in enumerate(manifest["findings"]):
        for k in ("name", "organ", "threshold", "pos_index", "neg_index"):
            _need(isinstance(f, dict) and k in f, f"{where}: findings[{i}] lacks field {k!r}")
        _need(f.get("score", "pair") in SCORE_RULES,
              f"{where}: findings[{i}] ({f.get('name')}) has score rule {f.get('score')!r}; this software scores "
              f"{', '.join(SCORE_RULES)} - install the software version the bundle was built for")
        if f.get("score") == "organ":  # the organ's evidence needs the finding's own prompt threshold
            _need(isinstance(f.get("prompt_threshold"), (int, float)),
                  f"{where}: findings[{i}] ({f.get('name')}) has score rule 'organ' without a numeric "
                  "prompt_threshold; calibrate the bundle again (`totalfm export calibrate`)")
    for rel, what in _referenced_files(manifest):
        _need(isinstance(rel, str) and not Path(rel).is_absolute() and ".." not in Path(rel).parts,
              f"{where}: {what} = {rel!r} must be a relative path inside the bundle")


def verify_files(root: Path, manifest: dict) -> None:
    """Every referenced file is listed in `files`; every listed file exists and has its recorded sha256."""
    files: dict = manifest["files"]
    for rel, what in _referenced_files(manifest):
        _need(rel in files, f"bundle {root}: {what} refers to {rel!r}, which has no sha256 in manifest 'files'; "
                            f"the manifest was edited by hand or built by a broken exporter - re-export the bundle")
    for rel, digest in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            raise BundleError(
                f"bundle {root}: file {rel!r} listed in the manifest is missing; copy the complete bundle directory "
                f"again (or re-export it)"
            )
        actual = sha256_file(p)
        if actual != digest:
            raise BundleError(
                f"bundle {root}: file {rel!r} has sha256 {actual[:16]}... but the manifest records {str(digest)[:16]}...; "
                f"the file was changed or corrupted after export - restore it from the original bundle or re-export"
            )


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Open a bundle directory (or its manifest.json). verify=True checks every file's sha256 (default)."""
    p = Path(path).expanduser()
    root = p.parent if p.name == MANIFEST and p.is_file() else p
    mpath = root / MANIFEST
    if not root.exists():
        raise BundleError(
            f"model bundle not found at {root}; set {ENV_VAR} to a bundle directory or build one "
            f"(`totalfm export bundle ...` / `totalfm export untrained --out DIR`)"
        )
    if not mpath.is_file():
        raise BundleError(f"{root} is not a model bundle: it has no {MANIFEST}; point {ENV_VAR} at the bundle "
                          f"directory (the one that holds {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e}); restore the bundle or re-export it") from None
    validate_manifest(manifest, str(mpath))
    onto = manifest["ontology"]
    from appliance.ontology import check_compatible

    try:
        check_compatible(str(onto.get("version")), onto.get("fingerprint"),
                         what=f"model bundle {manifest['bundle_id']} ({mpath}, field 'ontology')")
    except OntologyError as e:
        raise BundleError(str(e)) from None
    if verify:
        verify_files(root, manifest)
    return Bundle(root.resolve(), manifest)


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """Recompute `files` (sha256 of every referenced file plus any already listed) and write manifest.json.

    Used by the exporter after adding files (e.g. TensorRT engines); validates what it writes.
    """
    root = Path(root)
    rels = {rel for rel, _ in _referenced_files(manifest)} | set(manifest.get("files", {}))
    manifest["files"] = {rel: sha256_file(root / rel) for rel in sorted(rels) if (root / rel).is_file()}
    validate_manifest(manifest)
    verify_files(root, manifest)
    out = root / MANIFEST
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=_json_plain) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def _json_plain(o):
    """Checkpoint metrics arrive with numpy scalars/arrays in them; the manifest stores plain JSON numbers/lists."""
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} cannot go into manifest.json")
