"""3D ViT organ encoder: ONE shared backbone over all organ crops + a learned organ embedding.

Input ``crop`` float32 ``[B, 1, d, h, w]`` (from :func:`appliance.preprocess.encoder_input`), ``organ_index`` int64
``[B]`` (0-based index into ``appliance.ontology.ORGANS``). The crop is cut into tubelets (``t`` slices along z by
``p x p`` pixels) by a strided Conv3d, a learned positional embedding and the organ embedding are added to every
token, a CLS token is prepended, pre-norm transformer blocks follow, and the CLS output is the feature. The
projection head maps it into the shared image-text space and L2-normalises.

Only static-shape ops (no data-dependent control flow), so ``torch.onnx.export(dynamo=True, opset 18)`` works with a
dynamic batch axis.

Why one shared backbone and not 16 encoders: 16x fewer parameters (the tiny demo encoder: ~0.8 M vs ~13 M), every
organ's crops train the same weights (the small organs - adrenals, gallbladder - see 16x more gradient steps), and
one ONNX graph serves every organ in a single batched call. The organ embedding tells the shared model which organ it
is looking at (crops are already organ-specific, so this mostly sets the organ's "normal" baseline).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

N_ORGANS_DEFAULT = 16


@dataclass
class ViTConfig:
    input_shape: tuple[int, int, int] = (16, 64, 64)  # (d, h, w) encoder input grid
    tubelet: tuple[int, int, int] = (4, 8, 8)  # (t, p, p) tokens = prod(input_shape / tubelet)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 128  # shared image-text space
    n_organs: int = N_ORGANS_DEFAULT
    organ_embedding: bool = True  # False: plain shared backbone (ablation)
    dropout: float = 0.0
    # "linear": one strided Conv3d per tubelet (plain ViT). "conv": a hybrid stem (ViT paper, section 3.1) of 3x3x3
    # conv + BatchNorm + GELU stages with max-pooling down to the tubelet grid (tubelet sides must be powers of 2).
    # Why: in a CPU-minutes budget the linear-stem tiny ViT learned nothing from pixels, even with a supervised
    # loss, while a small BatchNorm CNN learned the size and density findings (docs/results/model.md, sessions 4-5).
    stem: str = "linear"
    # "cls": the CLS token is the feature. "mean_max": mean and max over the patch tokens, concatenated (the max keeps a
    # small lesion that covers a few tokens from being averaged away).
    pool: str = "cls"
    # > 0: the encoder also takes the organ's measurements (appliance.preprocess.organ_measurements, this many
    # numbers): standardised, read out by a linear map of the organ's own ([n_organs, K, dim]) and concatenated to
    # the pooled image feature. Why: in a CPU budget the encoder does not learn density thresholds such as "bright
    # voxels inside the gallbladder" from pixels, while the measurements carry them. Supervised probe, 300 steps:
    # pixels 0.607, measurements as an extra token 0.647, this readout 0.717 (docs/results/model.md, session 7).
    # 0 = pixels only (every checkpoint before session 7).
    measurements: int = 0
    # how the measurement readout joins the image feature. "concat" (sessions 7-8): concatenated before one projection
    # head. "sum": each has its own projection head and the embedding is their normalised sum, the image head's last
    # layer starting at zero; so the measurement branch can be trained alone first (contrastive
    # ``measurement_warmup_steps``, ~20 ms a step against ~1.5 s with the ViT) and the ViT then adds to it. Why: the
    # readout needs thousands of steps (measurements-only CLIP, session 9: enriched AUROC 0.80 after 2,000 steps,
    # 0.81 after 6,000), the joint model gets ~500 in the demo's CPU budget.
    fusion: str = "concat"

    def __post_init__(self):
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.tubelet = tuple(int(v) for v in self.tubelet)
        for n, t in zip(self.input_shape, self.tubelet):
            if n % t:
                raise ValueError(f"input_shape {self.input_shape} is not divisible by tubelet {self.tubelet}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.stem not in ("linear", "conv"):
            raise ValueError(f"stem must be 'linear' or 'conv', got {self.stem!r}")
        if self.fusion not in ("concat", "sum"):
            raise ValueError(f"fusion must be 'concat' or 'sum', got {self.fusion!r}")
        if self.fusion == "sum" and not self.measurements:
            raise ValueError("fusion 'sum' joins the measurement branch: it needs measurements > 0")
        if self.pool not in ("cls", "mean_max"):
            raise ValueError(f"pool must be 'cls' or 'mean_max', got {self.pool!r}")
        from appliance.preprocess import MEASUREMENT_VERSIONS
        if self.measurements not in (0, *MEASUREMENT_VERSIONS.values()):
            raise ValueError(f"measurements must be 0 or the count of a version of appliance.preprocess."
                             f"organ_measurements ({MEASUREMENT_VERSIONS}), got {self.measurements}")
        if self.stem == "conv" and any(t & (t - 1) for t in self.tubelet):
            raise ValueError(f"the conv stem pools by 2: tubelet sides must be powers of 2, got {self.tubelet}")

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(n // t for n, t in zip(self.input_shape, self.tubelet))  # type: ignore[return-value]

    @property
    def n_tokens(self) -> int:
        g = self.grid
        return g[0] * g[1] * g[2]

    @property
    def patch_voxels(self) -> int:
        return self.tubelet[0] * self.tubelet[1] * self.tubelet[2]

    @property
    def image_dim(self) -> int:
        """Width of the pooled image feature."""
        return 2 * self.dim if self.pool == "mean_max" else self.dim

    @property
    def feature_dim(self) -> int:
        """Width of the backbone feature the (image) projection head reads."""
        return self.image_dim + (self.dim if self.measurements and self.fusion == "concat" else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


SIZES: dict[str, dict] = {
    "tiny": dict(dim=128, depth=4, heads=4),
    "small": dict(dim=384, depth=12, heads=6),
    "base": dict(dim=768, depth=12, heads=12),
}


def config_for(size: str = "tiny", **overrides) -> ViTConfig:
    if size not in SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {', '.join(SIZES)}")
    return ViTConfig(**(SIZES[size] | overrides))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvStem(nn.Module):
    """[B,1,d,h,w] -> [B, dim, grid]: a 3x3x3 conv stage at full resolution, then one stage per factor of 2 of the
    largest tubelet side, max-pooling by 2 along each axis whose tubelet side is not yet reached, then a 1x1x1
    projection to ``dim``. Widths 16, 32, 64, 96, ... (capped at ``dim``)."""

    def __init__(self, tubelet: tuple[int, int, int], dim: int):
        super().__init__()
        steps = [int(math.log2(t)) for t in tubelet]
        n_stages = max(steps)
        widths = [min(16 * (2 ** i) if i < 3 else 96 + 32 * (i - 3), dim) for i in range(n_stages + 1)]
        self.pools = [tuple(2 if i < s else 1 for s in steps) for i in range(n_stages)]
        self.convs = nn.ModuleList([nn.Conv3d(1, widths[0], 3, padding=1)]
                                   + [nn.Conv3d(widths[i], widths[i + 1], 3, padding=1) for i in range(n_stages)])
        self.norms = nn.ModuleList(nn.BatchNorm3d(w) for w in widths)
        self.proj = nn.Conv3d(widths[-1], dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norms[0](self.convs[0](x)))
        for pool, conv, norm in zip(self.pools, self.convs[1:], self.norms[1:]):
            x = F.gelu(norm(conv(F.max_pool3d(x, pool))))
        return self.proj(x)


class MeasurementReadout(nn.Module):
    """Organ measurements [B, K] -> [B, dim]: standardised with fixed statistics of the training crops (buffers, set
    once by the contrastive stage, exported as constants), then a linear map of the crop's own organ. Per organ
    because the same number means different things in different organs: each has its own HU window and its own
    normal volume and density."""

    def __init__(self, n_organs: int, k: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("std", torch.ones(k))
        self.weight = nn.Parameter(torch.randn(n_organs, k, dim) * k ** -0.5)

    @torch.no_grad()
    def fit(self, measurements: torch.Tensor) -> None:
        """Set the standardisation from training measurements [N, K] (constant columns keep std 1)."""
        self.mean.copy_(measurements.mean(0))
        std = measurements.std(0)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, measurements: torch.Tensor, organ_index: torch.Tensor) -> torch.Tensor:
        z = (measurements - self.mean) / self.std
        return torch.bmm(z.unsqueeze(1), self.weight.index_select(0, organ_index)).squeeze(1)


class OrganViT(nn.Module):
    """Backbone: ``features(crop, organ_index) -> [B, dim]``; ``tokens(...)`` for the MAE (visible subset)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = (ConvStem(cfg.tubelet, cfg.dim) if cfg.stem == "conv"
                      else nn.Conv3d(1, cfg.dim, kernel_size=cfg.tubelet, stride=cfg.tubelet))
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, cfg.dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.organ = nn.Embedding(cfg.n_organs, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.measure = MeasurementReadout(cfg.n_organs, cfg.measurements, cfg.dim) if cfg.measurements else None
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.normal_(self.organ.weight, std=0.02)
        if not cfg.organ_embedding:
            self.organ.weight.data.zero_()
            self.organ.weight.requires_grad_(False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def embed(self, crop: torch.Tensor) -> torch.Tensor:
        """[B,1,d,h,w] -> patch tokens [B, N, dim] with positional embedding (no organ, no CLS)."""
        x = self.patch(crop).flatten(2).transpose(1, 2)
        return x + self.pos

    def encode_tokens(self, x: torch.Tensor, organ_index: torch.Tensor) -> torch.Tensor:
        """tokens [B, n, dim] (all or a visible subset) -> normed [B, 1 + n, dim] (CLS first)."""
        # index_select, not nn.Embedding.forward: the ONNX exporter names the aten::embedding output "embedding",
        # which collides with the graph output name "embedding" of the bundle contract.
        o = self.organ.weight.index_select(0, organ_index).unsqueeze(1)
        x = x + o
        cls = self.cls.expand(x.shape[0], -1, -1) + o
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def check_measurements(self, measurements: torch.Tensor | None) -> None:
        if (self.measure is None) != (measurements is None):
            raise ValueError(f"this encoder needs the organ measurements ({self.cfg.measurements} numbers per crop)"
                             if measurements is None else
                             "this encoder was built without measurements (ViTConfig.measurements = 0)")

    def image_features(self, crop: torch.Tensor, organ_index: torch.Tensor) -> torch.Tensor:
        """Pooled image feature [B, image_dim]."""
        x = self.encode_tokens(self.embed(crop), organ_index)
        return torch.cat([x[:, 1:].mean(1), x[:, 1:].amax(1)], dim=-1) if self.cfg.pool == "mean_max" else x[:, 0]

    def forward(self, crop: torch.Tensor, organ_index: torch.Tensor,
                measurements: torch.Tensor | None = None) -> torch.Tensor:
        """The "concat" feature: pooled image feature, then the measurement readout when the encoder takes them."""
        self.check_measurements(measurements)
        f = self.image_features(crop, organ_index)
        if self.measure is not None:
            f = torch.cat([f, self.measure(measurements, organ_index)], dim=-1)
        return f


def _head(d_in: int, cfg: ViTConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.embed_dim))


class OrganEncoder(nn.Module):
    """Backbone + projection head(s) -> L2-normalised embedding ``[B, embed_dim]`` (the exported graph).

    ``measurements_only`` (fusion "sum", training only, never exported): skip the ViT and embed the measurement
    branch alone - the contrastive stage's measurement warm-up."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = OrganViT(cfg)
        self.head = _head(cfg.feature_dim, cfg)
        self.measurements_only = False
        if cfg.fusion == "sum":
            self.measure_head = _head(cfg.dim, cfg)
            nn.init.zeros_(self.head[-1].weight)  # the ViT starts by adding nothing to a warmed-up measurement branch
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, crop: torch.Tensor, organ_index: torch.Tensor,
                measurements: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.fusion == "concat":
            return F.normalize(self.head(self.backbone(crop, organ_index, measurements)), dim=-1)
        self.backbone.check_measurements(measurements)
        z = self.measure_head(self.backbone.measure(measurements, organ_index))
        if not self.measurements_only:
            z = z + self.head(self.backbone.image_features(crop, organ_index))
        return F.normalize(z, dim=-1)


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
