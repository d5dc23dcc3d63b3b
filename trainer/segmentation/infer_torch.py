"""A torch-backed ``predict`` for ``appliance.segment.segment_volume`` (the trainer measures the runtime path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from appliance.segment import segment_volume
from appliance.volume import Volume


def torch_predict(model: torch.nn.Module):
    """[B,1,d,h,w] float32 numpy -> [B,C,d,h,w] float32 numpy logits, no grad, model in eval mode."""
    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()

    return predict


def segment_with_model(volume: Volume, model: torch.nn.Module, preprocessing: dict, batch_size: int = 2) -> Volume:
    return segment_volume(volume, preprocessing, torch_predict(model), batch_size=batch_size)


def segment_with_checkpoint(volume: Volume, checkpoint: str | Path, batch_size: int = 2) -> Volume:
    from trainer.segmentation.unet import build_from_checkpoint

    model, pp = build_from_checkpoint(checkpoint)
    return segment_with_model(volume, model, pp, batch_size)
