"""INT8 gate pieces: the AUROC is the Mann-Whitney statistic; quantised graphs stay close; the gate drops variants
it cannot measure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


def test_auroc_matches_pairwise_definition():
    from export.quantize import auroc

    rng = np.random.default_rng(0)
    s = np.round(rng.random(60), 1)  # ties on purpose
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(s, y) == pytest.approx(brute)
    assert np.isnan(auroc(s, np.zeros(60, bool)))


def test_int8_without_test_split_keeps_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from appliance.bundle import load_bundle
    from export.quantize import add_int8_variants
    from export.untrained import build_untrained_bundle

    root = build_untrained_bundle(tmp_path / "b")
    rep = add_int8_variants(root, None, log=lambda s: None)
    b = load_bundle(root)  # hashes still valid after the manifest edit
    for name in ("organ_encoder", "text_encoder"):
        assert rep["models"][name]["kept"] is False and "int8" not in b.model(name).variants
        assert not (root / rep["models"][name]["file"]).exists()
    assert b.provenance["int8"]["models"]["organ_encoder"]["reason"].startswith("no test split")
