"""A small 3-D U-Net for the 16 ontology organs (+ background): the distilled segmenter the default bundle ships.

Why this shape: 4 resolution levels (3 stride-2 down-samplings, so patch sizes must be multiples of 8), two
3x3x3 conv -> InstanceNorm -> LeakyReLU per level, skip connections by concatenation, transposed-conv up-sampling.
Only static-shape ops (Conv3d, InstanceNorm3d, LeakyReLU, ConvTranspose3d, cat), so the torch dynamo ONNX exporter
(opset 18) gives a graph with a dynamic batch and fixed patch dims and nothing data dependent.
Output: logits [B, 17, d, h, w]; channel c is organ label c (0 = background, c = ORGANS[c-1]).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from appliance import ontology

N_CLASSES = len(ontology.ORGANS) + 1

DEFAULT_CONFIG = {"in_channels": 1, "n_classes": N_CLASSES, "channels": [8, 16, 32, 64], "negative_slope": 0.01}


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, slope: float = 0.01):
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
            nn.LeakyReLU(slope, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.InstanceNorm3d(cout, affine=True),
            nn.LeakyReLU(slope, inplace=True),
        )


class UNet3D(nn.Module):
    def __init__(self, in_channels: int = 1, n_classes: int = N_CLASSES, channels=(8, 16, 32, 64),
                 negative_slope: float = 0.01):
        super().__init__()
        ch = list(channels)
        self.config = {"in_channels": in_channels, "n_classes": n_classes, "channels": ch,
                       "negative_slope": negative_slope}
        self.down = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(ch):
            self.down.append(ConvBlock(prev, c, stride=1 if i == 0 else 2, slope=negative_slope))
            prev = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_skip, c_low in zip(reversed(ch[:-1]), reversed(ch[1:])):
            self.up.append(nn.ConvTranspose3d(c_low, c_skip, 2, stride=2))
            self.dec.append(ConvBlock(2 * c_skip, c_skip, slope=negative_slope))
        self.head = nn.Conv3d(ch[0], n_classes, 1)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.config["channels"]) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def build(config: dict | None = None) -> UNet3D:
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    return UNet3D(cfg["in_channels"], cfg["n_classes"], tuple(cfg["channels"]), cfg["negative_slope"])


def save_checkpoint(path: str | Path, model: UNet3D, preprocessing: dict, metrics: dict | None = None,
                    extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "kind": "totalfm-seg-unet",
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(model.config),
        "preprocessing": dict(preprocessing),
        "ontology": {"version": ontology.ONTOLOGY_VERSION, "fingerprint": ontology.ontology_fingerprint()},
        "metrics": dict(metrics or {}),
        **(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def build_from_checkpoint(path: str | Path) -> tuple[UNet3D, dict]:
    """(model in eval mode, preprocessing dict) from a checkpoint; refuses one trained on another ontology."""
    ckpt = load_checkpoint(path)
    onto = ckpt.get("ontology", {})
    ontology.check_compatible(onto.get("version", "?"), onto.get("fingerprint"), what=f"segmentation checkpoint {path}")
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, dict(ckpt["preprocessing"])
