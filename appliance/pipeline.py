"""The analysis pipeline: one CT study -> organs, finding scores, measurements, a draft report -> AnalysisResult.

Explicit stages with typed hand-offs, each a plain function timed on its own (seconds in ``AnalysisResult.timings``):

    load       source (DICOM folder / file list / NIfTI / Volume)         -> Volume (HU, LPS)
    segment    Volume + bundle segmentation model (sliding window)        -> LabelMap (Volume of label ids, same grid)
    crop       Volume + LabelMap                                           -> CropSet (appliance.crops)
    encode     usable crops, organs batched through the organ encoder     -> {organ: embedding [E]}
    score      embeddings + bundle prompts/thresholds (appliance.scoring) -> [FindingResult]
    measure    Volume + LabelMap                                           -> {organ: OrganMeasurement}
    report     findings + organs (+ local LLM)                             -> ReportDraft (appliance.report_draft)
    write      organ label map NIfTI (organ label space, analysed grid)    -> artifacts["labels"]

`Pipeline` holds what is expensive to load (bundle, ONNX sessions, LLM) so a worker loads it once and analyses many
studies. Nothing here imports torch; the segmentation and encoder runners come from appliance.backends.
"""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance import ontology
from appliance.backends import Runner, open_model
from appliance.bundle import Bundle, default_bundle_path, load_bundle
from appliance.crops import CropSet, crop_organs, organ_index_map
from appliance.errors import TotalFMError
from appliance.measure import OrganMeasurement, measure_organs
from appliance.store.results import AnalysisResult, FindingResult, OrganResult, ReportDraft
from appliance.volume import Volume

log = logging.getLogger(__name__)

USABLE = ("ok", "partial_in_crop", "truncated_by_scan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------ stages


def load_stage(source) -> Volume:
    """DICOM folder / DICOM file list / NIfTI path / Volume -> Volume (series chosen with reasons in meta)."""
    if isinstance(source, Volume):
        return source
    from appliance.dicom_io import read_series
    from appliance.nifti_io import read_nifti

    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_file() and (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
            vol = read_nifti(p)
            vol.meta.setdefault("source", "nifti")
            return vol
        return read_series(p)
    return read_series(list(source))


def segment_stage(volume: Volume, runner: Runner, preprocessing: dict, *, batch_size: int = 2) -> Volume:
    from appliance.segment import segment_volume

    in_name = runner.input_names[0] if runner.input_names else "image"
    out_name = "logits"

    def predict(x: np.ndarray) -> np.ndarray:
        out = runner.run({in_name: np.ascontiguousarray(x, dtype=np.float32)})
        return out[out_name] if out_name in out else next(iter(out.values()))

    return segment_volume(volume, preprocessing, predict, batch_size=batch_size)


def crop_stage(volume: Volume, labels: Volume, label_space: str) -> CropSet:
    return crop_organs(volume, labels, label_space=label_space)


def encode_stage(crops: CropSet, runner: Runner, input_shape, organ_order: list[str], *,
                 batch_size: int = 8, measurements: str | None = None) -> dict[str, np.ndarray]:
    """Usable crops -> L2-normalised embeddings, organs batched (batch_size organs per encoder call).
    ``measurements``: the version of organ measurements the encoder also takes (bundle preprocessing
    ``measurements``); None: it takes none."""
    from appliance.preprocess import encoder_input, organ_measurements

    usable = [(name, c) for name, c in crops.crops.items() if c.usable and c.status in USABLE]
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(usable), batch_size):
        chunk = usable[i:i + batch_size]
        x = np.stack([encoder_input(c, input_shape) for _, c in chunk]).astype(np.float32, copy=False)
        idx = np.asarray([organ_order.index(n) for n, _ in chunk], dtype=np.int64)
        feeds = {"crop": x, "organ_index": idx}
        if measurements:
            feeds["measurements"] = np.stack([organ_measurements(c, measurements) for _, c in chunk]
                                             ).astype(np.float32)
        res = runner.run(feeds)
        emb = np.asarray(res["embedding"] if "embedding" in res else next(iter(res.values())), dtype=np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        for (name, _), e in zip(chunk, emb):
            out[name] = e
    return out


def score_stage(embeddings: dict[str, np.ndarray], bundle: Bundle) -> list[FindingResult]:
    """Zero-shot scores (appliance.scoring: prompt-ensemble softmax, max over a finding's organs) of every bundle
    finding that has an encoded organ; positive = scoring.decide(score, the bundle's calibrated threshold).
    Findings with no encoded organ get no row ("not assessable"), never a silent 0."""
    from appliance.scoring import decide, finding_scores

    specs = bundle.findings
    scores = finding_scores(embeddings, specs, bundle.prompt_embeddings, bundle.logit_scale) if embeddings else {}
    out = []
    for f in specs:
        s = scores.get(f.name)
        if s is None or not np.isfinite(s):
            continue
        out.append(FindingResult(organ=f.organ, finding=f.name, score=float(s), threshold=float(f.threshold),
                                 positive=bool(decide(float(s), f.threshold))))
    return out


def measure_stage(volume: Volume, labels: Volume, label_space: str) -> dict[str, OrganMeasurement]:
    return measure_organs(volume, labels, label_space=label_space)


def organ_results(crops: CropSet, measurements: dict[str, OrganMeasurement],
                  embeddings: dict[str, np.ndarray]) -> list[OrganResult]:
    out = []
    for name in ontology.ORGAN_NAMES:
        c = crops.crops.get(name)
        status = c.status if c is not None else "absent"
        m = measurements.get(name)
        out.append(OrganResult(organ=name, status=status,
                               volume_ml=None if m is None else float(m.volume_ml),
                               mean_hu=None if m is None else float(m.mean_hu),
                               std_hu=None if m is None else float(m.std_hu),
                               embedding=embeddings.get(name)))
    return out


def write_labels(labels: Volume, label_space: str, out_dir: Path) -> Path:
    """Organ label map (0 = background, i+1 = ORGANS[i]) on the analysed grid, as NIfTI (the SEG is made from it)."""
    from appliance.nifti_io import write_nifti

    omap = organ_index_map(labels, label_space).astype(np.uint8, copy=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "labels.nii.gz"
    tmp = out_dir / "labels.tmp.nii.gz"
    write_nifti(labels.with_array(omap, label_space="organ"), tmp)
    tmp.replace(path)  # atomic: the DICOM node never reads a half-written file
    return path


# ------------------------------------------------------------------------------------------------ the pipeline


@dataclass
class PipelineOutput:
    result: AnalysisResult
    volume: Volume
    labels: Volume
    crops: CropSet
    measurements: dict[str, OrganMeasurement]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)


class Pipeline:
    """Loaded bundle + runners (+ optional LLM); ``analyse(source, out_dir=...)`` runs all stages."""

    def __init__(self, bundle: Bundle | str | Path | None = None, *, backend: str = "auto", threads: int | None = None,
                 llm: Any = "default", variant: str = "auto", seg_batch: int = 2, encoder_batch: int = 8):
        t0 = time.perf_counter()
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle if bundle is not None else default_bundle_path())
        self.bundle = bundle
        self.seg_spec = bundle.model("segmentation")
        self.enc_spec = bundle.model("organ_encoder")
        self.seg = self._open("segmentation", self.seg_spec, backend, threads, variant)
        self.enc = self._open("organ_encoder", self.enc_spec, backend, threads, variant)
        self.label_space = self.seg_spec.preprocessing.get("label_space", "organ")
        shape = self.enc_spec.preprocessing.get("input_shape")
        if not shape:
            raise TotalFMError(f"bundle {bundle.bundle_id}: models.organ_encoder.preprocessing has no input_shape; "
                               f"re-export the bundle")
        self.input_shape = tuple(int(s) for s in shape)
        self.measurements = self._check_measurements(bundle, self.enc_spec.preprocessing)
        self.seg_batch, self.encoder_batch = seg_batch, encoder_batch
        self.llm, self.llm_error = self._load_llm(llm, threads)
        self.load_seconds = time.perf_counter() - t0
        log.info("pipeline ready in %.2f s: bundle %s, segmentation on %s, encoder on %s, LLM %s",
                 self.load_seconds, bundle.bundle_id, self.seg.backend, self.enc.backend,
                 getattr(self.llm, "model_name", None) or f"off ({self.llm_error})")

    @property
    def backend(self) -> str:
        return self.seg.backend if self.seg.backend == self.enc.backend else f"{self.seg.backend}+{self.enc.backend}"

    @staticmethod
    def _check_measurements(bundle: Bundle, pre: dict) -> str | None:
        """The version of organ measurements the organ encoder takes (None: none), refused unless this software
        computes that version with that count."""
        from appliance.preprocess import MEASUREMENT_VERSIONS

        n = int(pre.get("n_measurements", 0))
        if not n:
            return None
        version = pre.get("measurements")
        if MEASUREMENT_VERSIONS.get(version) != n:
            known = ", ".join(f"{v} ({c})" for v, c in MEASUREMENT_VERSIONS.items())
            raise TotalFMError(f"bundle {bundle.bundle_id}: its organ encoder takes {n} measurements of kind "
                               f"{version!r}, this software computes {known}; install the software version the "
                               "bundle was built for")
        return version

    def _open(self, name, spec, backend, threads, variant) -> Runner:
        r = open_model(spec.path, backend, threads, bundle=self.bundle, model_name=name)
        want = variant
        if variant == "auto":  # int8 where the exporter shipped one and we run on CPU (GPU runs fp32/fp16 graphs)
            want = "int8" if r.backend == "onnxruntime-cpu" and "int8" in spec.variants else "fp32"
        if want != "fp32" and r.backend.startswith("onnxruntime"):
            r = open_model(spec.variant(want), r.backend.split("-", 1)[1], threads)
            r.reason += f"; variant {want}"
        return r

    @staticmethod
    def _load_llm(llm, threads):
        if llm is None or llm == "off":
            return None, "LLM off by configuration"
        if not isinstance(llm, (str, Path)):
            return llm, None  # an already loaded LocalLLM
        from appliance.llm import LLMUnavailable, load_llm

        try:
            return load_llm(None if llm == "default" else llm, n_ctx=2048, n_threads=threads), None
        except LLMUnavailable as exc:
            log.warning("report drafts will use the template: %s", exc)
            return None, str(exc)

    @contextmanager
    def _timed(self, timings: dict, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings[stage] = round(time.perf_counter() - t0, 4)

    def analyse(self, source, *, out_dir: str | Path | None = None) -> PipelineOutput:
        """Run every stage on one study. ``out_dir``: where the label map NIfTI goes (no artifact when None)."""
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        with self._timed(timings, "load"):
            volume = load_stage(source)
        with self._timed(timings, "segment"):
            labels = segment_stage(volume, self.seg, self.seg_spec.preprocessing, batch_size=self.seg_batch)
        with self._timed(timings, "crop"):
            crops = crop_stage(volume, labels, self.label_space)
        with self._timed(timings, "encode"):
            emb = encode_stage(crops, self.enc, self.input_shape, self.bundle.organs,
                               batch_size=self.encoder_batch, measurements=self.measurements)
        with self._timed(timings, "score"):
            findings = score_stage(emb, self.bundle)
        with self._timed(timings, "measure"):
            meas = measure_stage(volume, labels, self.label_space)
        organs = organ_results(crops, meas, emb)
        with self._timed(timings, "report"):
            from appliance.report_draft import draft_report

            report: ReportDraft = draft_report(findings, organs, llm=self.llm, llm_error=self.llm_error)
            report.model_ids = {**(report.model_ids or {}), "bundle_id": self.bundle.bundle_id,
                                "bundle_version": self.bundle.bundle_version}
        artifacts = None
        if out_dir is not None:
            with self._timed(timings, "write"):
                artifacts = {"labels": str(write_labels(labels, self.label_space, Path(out_dir)))}
        timings["total"] = round(time.perf_counter() - t_all, 4)
        timings["peak_rss_mb"] = round(peak_rss_mb(), 1)
        result = AnalysisResult(organs=organs, findings=findings, report=report,
                                series_uid=volume.meta.get("series_uid"), bundle_id=self.bundle.bundle_id,
                                backend=self.backend, timings=timings, artifacts=artifacts)
        return PipelineOutput(result, volume, labels, crops, meas, emb)


def analyse(source, *, bundle=None, backend: str = "auto", threads: int | None = None, llm: Any = "default",
            out_dir: str | Path | None = None) -> PipelineOutput:
    """One-shot convenience (loads everything, analyses one study)."""
    return Pipeline(bundle, backend=backend, threads=threads, llm=llm).analyse(source, out_dir=out_dir)
