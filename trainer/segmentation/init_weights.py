"""Where a segmentation training stage starts from: a checkpoint, or the segmenter of an exported bundle.

Why a bundle: the bundle is what ships to a hospital, and it may be all that is left of a model (the trainer's
checkpoints stay on the machine that trained them). The bundle's segmentation ONNX keeps every weight as a named
initializer (the dynamo exporter keeps the module's state-dict names), so the U-Net can be rebuilt from it and
fine-tuned on site. Before the weights are used, the rebuilt network must give the bundle's own logits on a test
patch; a graph that was optimised or renamed is refused instead of being half-loaded.

The held-out patient travels with the weights: a stage that continues a model trained on patient A must not train on
patient B, or no real patient is left to test it on (seg_data's patient split).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from appliance import ontology
from appliance.errors import TotalFMError

# ONNX Runtime CPU against torch CPU, float32, the same weights: differences are rounding, and rounding grows with the
# logits. On the noise probe below bundle s14's logits reach 225-260 and differ by up to 1.5e-3 (relative 2.6e-6 to
# 6.7e-6 over 8 probes); a fixed 1e-3 refused it one probe in two. A wrong weight mapping differs by whole logits.
PARITY_MAX_ABS_LOGIT = 1e-3
PARITY_MAX_REL_LOGIT = 2e-5


def parity_tolerance(ref: np.ndarray) -> float:
    """Largest |torch - ONNX| logit difference that is still rounding, for reference logits ``ref``."""
    return max(PARITY_MAX_ABS_LOGIT, PARITY_MAX_REL_LOGIT * float(np.abs(ref).max(initial=0.0)))


@dataclass
class InitWeights:
    state_dict: dict
    config: dict               # UNet3D config (channels, ...)
    held_out_patient: str | None  # "A" | "B" | None when the source does not say
    source: str                 # what the weights came from, for the checkpoint's provenance
    preprocessing: dict         # what the model was run with (spacing, patch, clean-up ...)


def load_init(path: str | Path) -> InitWeights:
    """A seg checkpoint (.pt), or a bundle (its folder, manifest.json or segmentation .onnx) -> InitWeights."""
    p = Path(path)
    if not p.exists():
        raise TotalFMError(f"--init {p}: no such file or folder (give a segmentation checkpoint or a model bundle)")
    if p.suffix == ".pt":
        return _from_checkpoint(p)
    return _from_bundle(p)


def _from_checkpoint(p: Path) -> InitWeights:
    from trainer.segmentation.unet import load_checkpoint

    ckpt = load_checkpoint(p)
    onto = ckpt.get("ontology", {})
    ontology.check_compatible(onto.get("version", "?"), onto.get("fingerprint"), what=f"segmentation checkpoint {p}")
    held = (ckpt.get("provenance") or {}).get("held_out_patient")
    return InitWeights(ckpt["state_dict"], dict(ckpt["config"]), held, f"checkpoint {p}",
                       dict(ckpt.get("preprocessing") or {}))


def _bundle_root(p: Path) -> Path:
    if p.is_dir():
        return p
    if p.name == "manifest.json":
        return p.parent
    if p.suffix == ".onnx":  # <bundle>/models/segmentation.onnx
        return p.parent.parent
    raise TotalFMError(f"--init {p}: neither a checkpoint (.pt) nor a bundle (folder, manifest.json or .onnx)")


def _held_out_from_bundle(provenance: dict) -> str | None:
    """The exporter stores the segmenter's seg-eval Dice under 'real patient X' (X = the held-out patient)."""
    dice = ((provenance.get("metrics") or {}).get("segmentation") or {}).get("dice") or {}
    held = {m.group(1) for k in dice if (m := re.fullmatch(r"real patient ([AB])", k))}
    return held.pop() if len(held) == 1 else None


def _from_bundle(p: Path) -> InitWeights:
    import onnx
    from onnx import numpy_helper

    from appliance.bundle import load_bundle
    from trainer.segmentation.unet import build

    bundle = load_bundle(_bundle_root(p))
    spec = bundle.model("segmentation")
    graph = onnx.load(str(spec.path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    channels = _channels(weights, spec.path)
    model = build({"channels": channels})
    want = model.state_dict()
    missing = [k for k in want if k not in weights]
    if missing:
        raise TotalFMError(f"{spec.path}: the graph does not hold the U-Net's weights by name (missing {missing[:3]}"
                           f"{' ...' if len(missing) > 3 else ''}); re-export it from its checkpoint, or give the "
                           f"checkpoint itself")
    wrong = [f"{k} {tuple(weights[k].shape)} != {tuple(want[k].shape)}" for k in want
             if tuple(weights[k].shape) != tuple(want[k].shape)]
    if wrong:  # e.g. another class count: the ontology's 16 organs + background are what seg-train trains
        raise TotalFMError(f"{spec.path}: weights of another shape than this U-Net's ({'; '.join(wrong[:2])}); "
                           f"it cannot be trained further by seg-train")
    state = {k: torch.from_numpy(np.array(weights[k], dtype=np.float32)) for k in want}
    model.load_state_dict(state)
    _check_parity(model, spec.path, spec.preprocessing)
    return InitWeights(state, dict(model.config), _held_out_from_bundle(bundle.provenance),
                       f"bundle {bundle.bundle_id} ({spec.path})", dict(spec.preprocessing))


def _channels(weights: dict, path: Path) -> list[int]:
    chans = []
    for i in range(16):
        w = weights.get(f"down.{i}.0.weight")
        if w is None:
            break
        chans.append(int(w.shape[0]))
    if not chans:
        raise TotalFMError(f"{path}: not a TotalFM U-Net segmenter (no 'down.0.0.weight' initializer); an imported "
                           f"nnU-Net/TotalSegmentator model cannot be fine-tuned by seg-train")
    return chans


def _check_parity(model, onnx_path: Path, pp: dict) -> None:
    import onnxruntime as ort

    patch = [int(v) for v in pp["patch_size"]]
    x = np.random.default_rng(0).normal(0, 1, (2, 1, *patch)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    tol = parity_tolerance(ref)
    if not diff <= tol:
        raise TotalFMError(f"{onnx_path}: the U-Net rebuilt from its weights does not reproduce the graph's logits "
                           f"(max |diff| {diff:.3g} > {tol:.3g}); refusing to train from it")
