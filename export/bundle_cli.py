"""`totalfm export bundle --seg CKPT --encoder CKPT --out DIR`: trained checkpoints -> verified model bundle.

The encoder checkpoint (trainer.model.checkpoint format, contrastive stage) carries the organ encoder, the text tower
(+ tokenizer), the CLIP logit scale, the per-finding thresholds picked on the validation split and the metrics; the
segmentation checkpoint (trainer.segmentation.unet) carries the U-Net and its preprocessing dict. Parity is checked
on real organ crops and real CT patches from the shared data; the export fails if it is not met.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export import real_inputs
from export.bundle_build import build_bundle


class _NormalisedText:
    """Wrap a text tower so the exported graph always ends in L2 normalisation (idempotent if it already does)."""

    def __new__(cls, tower):
        import torch
        import torch.nn.functional as F

        class Wrapped(torch.nn.Module):
            def __init__(self, t):
                super().__init__()
                self.tower = t

            def forward(self, input_ids, attention_mask):
                out = self.tower(input_ids, attention_mask)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                return F.normalize(out, dim=-1)

        return Wrapped(tower).eval()


def load_text(encoder_ckpt: str | Path, tokenizer: str | None = None, max_length: int | None = None):
    """(module, tokenizer.json path, max_length) from a contrastive checkpoint."""
    from trainer.model.checkpoint import load_text_tower

    tower, cfg = load_text_tower(encoder_ckpt)
    tok = tokenizer or cfg.get("tokenizer_json") or cfg.get("tokenizer") or cfg.get("tokenizer_path")
    if not tok:  # both text towers (contrastive.LocalTextTower, text_tower.TextTower) use MiniLM's tokenizer.json
        from trainer.model.text_tower import tokenizer_json_path

        tok = str(tokenizer_json_path())
    if not tok or not Path(tok).is_file():
        raise SystemExit(f"the text tower's tokenizer.json was not found ({tok!r}); pass --tokenizer PATH")
    from appliance.text import DEFAULT_MAX_LENGTH

    ml = int(max_length or cfg.get("max_length") or DEFAULT_MAX_LENGTH)
    return _NormalisedText(tower), Path(tok), ml


def export_from_checkpoints(seg_ckpt: str | Path | None, encoder_ckpt: str | Path, out: str | Path, *,
                            text=None, tokenizer: str | None = None, max_length: int | None = None,
                            parity_crops: int | None = None, overwrite: bool = False, log=print,
                            bundle_id: str | None = None) -> Path:
    import torch

    from trainer.model.checkpoint import load_encoder

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    enc, meta = load_encoder(encoder_ckpt)
    shape = [int(v) for v in meta["preprocessing"]["input_shape"]]
    n_meas = int(meta["preprocessing"].get("n_measurements", 0))
    parity = {"organ_encoder": real_inputs.encoder_batches(shape, limit=parity_crops, n_measurements=n_meas)}
    seg = None
    seg_meta = {}
    if seg_ckpt:
        from trainer.segmentation.unet import build_from_checkpoint, load_checkpoint

        seg_mod, seg_pre = build_from_checkpoint(seg_ckpt)
        seg_pre.setdefault("label_space", "organ")
        seg = (seg_mod, seg_pre)
        parity["segmentation"] = real_inputs.seg_batches(seg_pre, n=2)
        seg_meta = {"checkpoint": str(seg_ckpt), "metrics": load_checkpoint(seg_ckpt).get("metrics", {})}
    if text is None:
        text = load_text(encoder_ckpt, tokenizer, max_length)
    logit_scale = meta.get("logit_scale")
    if logit_scale is None:
        raise SystemExit(f"{encoder_ckpt} has no logit_scale (stage {meta.get('stage')!r}); export a contrastive "
                         f"checkpoint")
    prov = dict(meta.get("provenance") or {})
    prov.update({
        "encoder_checkpoint": str(encoder_ckpt), "encoder_stage": meta.get("stage"),
        "model_config": meta.get("model_config"),
        "metrics": {"encoder": meta.get("metrics", {}), "segmentation": seg_meta.get("metrics", {})},
        "segmentation_checkpoint": seg_meta.get("checkpoint"),
        "anchor": meta.get("anchor"),  # which findings are prompt-supervised (not zero-shot), for `train eval`
    })
    enc_meta = {"input_shape": shape,
                "preprocessing": {"encoder_input": "appliance.preprocess.encoder_input",
                                  "crop_value_range": meta["preprocessing"].get("crop_value_range", [0.0, 1.0]),
                                  **({"measurements": meta["preprocessing"]["measurements"],
                                      "n_measurements": n_meas} if n_meas else {})},
                "extra": {"embed_dim": (meta.get("model_config") or {}).get("embed_dim")}}
    return build_bundle(out, segmentation=seg, organ_encoder=(enc, enc_meta), text_encoder=text,
                        thresholds=dict(meta.get("thresholds") or {}),
                        score_rules=dict(meta.get("score_rules") or {}), logit_scale=float(logit_scale),
                        prompt_thresholds=dict(meta.get("prompt_thresholds") or {}),
                        provenance=prov, parity_inputs=parity, overwrite=overwrite, log=log, bundle_id=bundle_id)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export bundle", description=__doc__.splitlines()[0])
    p.add_argument("--seg", help="segmentation checkpoint (trainer.segmentation.unet); omit for no segmenter")
    p.add_argument("--encoder", required=True, help="contrastive encoder checkpoint (carries text tower, thresholds)")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", help="tokenizer.json of the text tower when the checkpoint does not name it")
    p.add_argument("--max-length", type=int)
    p.add_argument("--bundle-id")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    a = p.parse_args(argv)
    out = export_from_checkpoints(a.seg, a.encoder, a.out, tokenizer=a.tokenizer, max_length=a.max_length,
                                  overwrite=a.force, bundle_id=a.bundle_id)
    m = json.loads((Path(out) / "manifest.json").read_text())
    print(json.dumps({"bundle": str(out), "bundle_id": m["bundle_id"], "parity": m["provenance"]["parity"]},
                     indent=2))
    return 0
