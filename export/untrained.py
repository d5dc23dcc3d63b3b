"""A tiny bundle of RANDOM networks with exactly the bundle's model I/O contracts (plumbing only, not a model).

For pipeline/worker/CLI tests that need a real bundle on disk without trained checkpoints: the segmentation net,
organ encoder and text encoder are a few-kB torch modules with fixed random seeds, exported through the same
`build_bundle` path as real models (ONNX, parity, prompt embeddings, hashes). Its outputs mean nothing; its
provenance says so. `totalfm export untrained --out DIR`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from appliance import ontology

EMBED_DIM = 32
ENCODER_INPUT_SHAPE = [32, 64, 64]
SEG_PREPROCESSING = {
    "spacing_mm": [3.0, 3.0, 3.0],
    "patch_size": [32, 64, 64],
    "clip_hu": [-1000.0, 1000.0],
    "mean": 0.0,
    "std": 500.0,
    "label_space": "organ",
    "class_ids": list(range(len(ontology.ORGANS) + 1)),
    "step": 0.5,
}
MAX_LENGTH = 32


def _modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class TinySeg(nn.Module):
        def __init__(self, classes: int):
            super().__init__()
            self.a = nn.Conv3d(1, 8, 3, padding=1)
            self.b = nn.Conv3d(8, classes, 1)

        def forward(self, image):
            return self.b(F.relu(self.a(image)))

    class TinyOrganEncoder(nn.Module):
        def __init__(self, n_organs: int, dim: int):
            super().__init__()
            self.conv = nn.Conv3d(1, 8, 3, stride=2, padding=1)
            self.organ = nn.Embedding(n_organs, 8)
            self.proj = nn.Linear(16, dim)

        def forward(self, crop, organ_index):
            h = F.relu(self.conv(crop)).mean(dim=(2, 3, 4))
            z = self.proj(torch.cat([h, self.organ(organ_index)], dim=1))
            return F.normalize(z, dim=1)

    class TinyTextEncoder(nn.Module):
        def __init__(self, vocab: int, dim: int):
            super().__init__()
            self.emb = nn.Embedding(vocab, 16)
            self.proj = nn.Linear(16, dim)

        def forward(self, input_ids, attention_mask):
            m = attention_mask.unsqueeze(-1).to(torch.float32)
            h = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
            return F.normalize(self.proj(h), dim=1)

    return TinySeg, TinyOrganEncoder, TinyTextEncoder


def write_word_tokenizer(path: Path) -> int:
    """Word-level tokenizer over every prompt word of the ontology (lower-cased, punctuation split). -> vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = set()
    for f in ontology.FINDINGS:
        for p in f.positive_prompts + f.negative_prompts + f.synonyms:
            words.update(p.lower().replace("-", " ").split())
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return len(vocab)


def build_untrained_bundle(out_dir: str | Path, *, seed: int = 0, overwrite: bool = False, log=lambda s: None) -> Path:
    import torch

    from export.bundle_build import build_bundle

    torch.manual_seed(seed)
    TinySeg, TinyOrganEncoder, TinyTextEncoder = _modules()
    with tempfile.TemporaryDirectory() as td:
        tok_path = Path(td) / "tokenizer.json"
        vocab = write_word_tokenizer(tok_path)
        seg = TinySeg(len(SEG_PREPROCESSING["class_ids"])).eval()
        enc = TinyOrganEncoder(len(ontology.ORGANS), EMBED_DIM).eval()
        txt = TinyTextEncoder(vocab, EMBED_DIM).eval()
        return build_bundle(
            out_dir,
            segmentation=(seg, dict(SEG_PREPROCESSING)),
            organ_encoder=(enc, {"input_shape": ENCODER_INPUT_SHAPE}),
            text_encoder=(txt, tok_path, MAX_LENGTH),
            thresholds=0.5,
            logit_scale=14.285714,  # 1/0.07, CLIP's initial temperature
            provenance={
                "recipe": "untrained",
                "data": "none: random weights (seed %d) for plumbing tests; outputs are meaningless" % seed,
                "metrics": {},
            },
            bundle_id=f"untrained-seed{seed}",
            bundle_version="0",
            overwrite=overwrite,
            log=log,
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export untrained",
                                description="write a tiny bundle of random networks (plumbing tests only)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    a = p.parse_args(argv)
    out = build_untrained_bundle(a.out, seed=a.seed, overwrite=a.force, log=print)
    m = json.loads((out / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"bundle": str(out), "bundle_id": m["bundle_id"], "bytes": size}, indent=2))
    return 0
