"""VideoMAE pieces: tube mask keeps the same masked count per sample, patchify matches the Conv3d token order,
the MAE loss trains down on real organ crops, and the contrastive loss treats agreeing labels as positives."""
from __future__ import annotations

import torch

from trainer.model.contrastive import multi_positive_infonce
from trainer.model.data import from_synth, organ_batches
from trainer.model.videomae import VideoMAE, patchify, tube_mask
from trainer.model.vit3d import ViTConfig

torch.set_num_threads(1)
CFG = ViTConfig(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=16)


def test_tube_mask_same_count_and_disjoint():
    keep, masked = tube_mask(5, 64, 0.9, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (5, 6) and masked.shape == (5, 58)
    for k, m in zip(keep, masked):
        assert set(k.tolist()).isdisjoint(m.tolist()) and len(set(k.tolist()) | set(m.tolist())) == 64
    assert not torch.equal(keep[0], keep[1])  # random per sample


def test_patchify_matches_conv_token_order():
    x = torch.rand(2, 1, 8, 32, 32)
    conv = torch.nn.Conv3d(1, 1, kernel_size=CFG.tubelet, stride=CFG.tubelet, bias=False)
    torch.nn.init.normal_(conv.weight)
    via_conv = conv(x).flatten(2).transpose(1, 2)[..., 0]  # [B,N]
    via_patch = patchify(x, CFG.tubelet) @ conv.weight.flatten()  # [B,N]
    torch.testing.assert_close(via_conv, via_patch, atol=1e-5, rtol=1e-5)


def test_mae_loss_goes_down_on_real_crops():
    bank = from_synth(1, 0, CFG.input_shape)
    x = torch.stack([torch.from_numpy(a.astype("float32")) for a in bank.x])
    oi = torch.tensor(bank.organ)
    torch.manual_seed(0)
    m = VideoMAE(CFG)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        loss = m(x, oi, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_organ_batches_are_single_organ_and_cover_bank():
    bank = from_synth(3, 0, CFG.input_shape)
    batches = organ_batches(bank, 3, seed=0)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    pure = [b for b in batches if len({bank.organ[i] for i in b}) == 1]
    assert len(pure) >= 1 and all(len({bank.study[i] for i in b}) == len(b) for b in pure)


def test_multi_positive_infonce_prefers_matching_keys():
    e = torch.nn.functional.normalize(torch.eye(4)[:, :4], dim=-1)
    keys = ["normal", "normal", "cyst", "stone"]
    scale = torch.tensor(2.0)
    good, _ = multi_positive_infonce(e, e, keys, scale)
    bad, _ = multi_positive_infonce(e, e.flip(0), keys, scale)
    assert good < bad
