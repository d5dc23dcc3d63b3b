"""VideoMAE pieces: tube mask keeps the same masked count per sample, patchify matches the Conv3d token order,
the MAE loss trains down on real organ crops, and the contrastive loss treats agreeing labels as positives."""
from __future__ import annotations

import pytest
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


def test_mae_with_conv_stem_blanks_masked_tubelets_before_the_stem():
    # a conv stem's receptive field spans neighbouring tubelets: the visible tokens must not depend on masked pixels
    cfg = ViTConfig(**(CFG.to_dict() | {"stem": "conv", "pool": "mean_max"}))
    m = VideoMAE(cfg).eval()
    seen = []
    m.encoder.backbone.encode_tokens = lambda vis, oi: (seen.append(vis.detach().clone()),
                                                        torch.zeros(vis.shape[0], vis.shape[1] + 1, cfg.dim))[1]
    x = torch.rand(2, 1, *cfg.input_shape)
    oi = torch.tensor([0, 1])
    m(x, oi, generator=torch.Generator().manual_seed(3))
    keep, _ = tube_mask(2, cfg.n_tokens, m.mask_ratio, generator=torch.Generator().manual_seed(3))
    visible = torch.zeros(2, cfg.n_tokens).scatter(1, keep, 1.0).view(2, 1, *cfg.grid)
    vox = torch.nn.functional.interpolate(visible, scale_factor=cfg.tubelet, mode="nearest")
    m(x + (1 - vox) * torch.rand_like(x), oi, generator=torch.Generator().manual_seed(3))  # change masked pixels only
    torch.testing.assert_close(seen[0], seen[1])


class _HashText:
    """A deterministic text embedder (the anchor only needs model.encode_text); real MiniLM is covered elsewhere."""

    def encode_text(self, texts, device):
        g = [torch.Generator().manual_seed(sum(map(ord, t)) * 131 + len(t)) for t in texts]
        return torch.nn.functional.normalize(torch.stack([torch.randn(16, generator=x) for x in g]), dim=-1)


def test_prompt_anchor_holds_findings_out_and_scores_the_evaluators_direction():
    from appliance import ontology
    from trainer.model.contrastive import PromptAnchor

    a = PromptAnchor(1.0, holdout_every=3)
    cat = [f.name for f in ontology.CATEGORY_FINDINGS]
    assert set(a.names) | set(a.held_out) == set(cat) and not set(a.names) & set(a.held_out)
    assert len(a.held_out) == len(cat) // 3 and a.meta()["zero_shot"] == a.held_out
    name = next(n for n in a.names if ontology.finding(n).organs[0] == "liver")
    f = ontology.finding(name)
    t = _HashText()
    direction = torch.nn.functional.normalize(t.encode_text(list(f.positive_prompts), "cpu").mean(0)
                                              - t.encode_text(list(f.negative_prompts), "cpu").mean(0), dim=0)
    liver = torch.tensor([ontology.ORGAN_NAMES.index("liver")] * 2)
    right = torch.stack([direction, -direction])
    keys = [name, "normal"]
    assert a(t, right, liver, keys) < 0.5 * a(t, right.flip(0), liver, keys)
    # a finding not scored in the crop's organ contributes nothing: spleen crops only see spleen findings
    spleen = torch.tensor([ontology.ORGAN_NAMES.index("spleen")] * 2)
    assert torch.isclose(a(t, right, spleen, keys), a(t, right.flip(0), spleen, keys))
    with pytest.raises(ValueError):
        PromptAnchor(1.0, holdout_every=1)


def test_mixed_organ_batches_keep_single_organ_groups():
    bank = from_synth(3, 0, CFG.input_shape)
    batches = organ_batches(bank, 8, seed=0, organs_per_batch=4)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))  # no crop twice
    assert sorted(seen) == sorted(i for b in organ_batches(bank, 2, seed=0) for i in b)  # the same crops as k=1
    assert max(len({bank.organ[i] for i in b}) for b in batches) > 1  # BatchNorm sees several organs


def test_grouped_infonce_is_the_mean_of_the_per_organ_losses():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    keys = ["normal", "a", "normal", "normal", "b", "normal"]
    groups = torch.tensor([0, 0, 0, 5, 5, 5])
    scale = torch.tensor(2.0)
    got, _ = multi_positive_infonce(img, txt, keys, scale, groups=groups)
    first, _ = multi_positive_infonce(img[:3], txt[:3], keys[:3], scale)
    second, _ = multi_positive_infonce(img[3:], txt[3:], keys[3:], scale)
    torch.testing.assert_close(got, (first + second) / 2)
    # "normal" of organ 0 is not a positive for "normal" of organ 5: without groups the loss differs
    assert not torch.isclose(multi_positive_infonce(img, txt, keys, scale)[0], got)
