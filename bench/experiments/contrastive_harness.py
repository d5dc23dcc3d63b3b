"""Session-4 diagnostic (docs/results/model.md, #5): short contrastive runs in one process on a cached crop bank,
scored by the real evaluator (val thresholds, test metrics). Not product code and not tested; kept so the figures in
model.md can be reproduced. Example (after `totalfm train recipe demo --out var/demo2 --skip pretrain,contrastive,eval`):

    python bench/experiments/contrastive_harness.py --pairs var/demo2/pairs --cache var/demo2/bank16.pkl \
        --steps 300 --arch cnn --loss anchor --tag anchor_cnn

--arch vit|cnn|hmlp, --loss infonce|proto|anchor, --locked pca|white (freeze a PCA text projection).
"""
import argparse, json, math, os, pickle, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from appliance import ontology
from trainer.model import data as D
from trainer.model.vit3d import OrganEncoder, config_for
from trainer.model.contrastive import CLIPModel, new_text_tower, multi_positive_infonce
from trainer.evaluate import zeroshot as Z
ap = argparse.ArgumentParser()
ap.add_argument('--pairs'); ap.add_argument('--cache'); ap.add_argument('--shape', default='16,64,64')
ap.add_argument('--tubelet', default='4,8,8'); ap.add_argument('--steps', type=int, default=200)
ap.add_argument('--lr', type=float, default=1e-3); ap.add_argument('--pool', default='cls')
ap.add_argument('--aug', default='0.1,0.05')
ap.add_argument('--threads', type=int, default=1); ap.add_argument('--abfrac', type=float, default=0.5)
ap.add_argument('--bs', type=int, default=32); ap.add_argument('--eval-every', type=int, default=0)
ap.add_argument('--loss', default='infonce'); ap.add_argument('--arch', default='vit'); ap.add_argument('--init'); ap.add_argument('--locked', default=''); ap.add_argument('--tag', default='x'); ap.add_argument('--wd', type=float, default=0.05)
a = ap.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
shape = tuple(int(v) for v in a.shape.split(',')); tub = tuple(int(v) for v in a.tubelet.split(','))
if a.cache and os.path.exists(a.cache):
    bank = pickle.load(open(a.cache, 'rb'))
else:
    t0 = time.time(); bank = D.from_pairs(a.pairs, shape, splits=('train', 'val', 'test'), with_labels=True)
    print('bank', len(bank), f'{time.time()-t0:.0f}s', flush=True)
    if a.cache: pickle.dump(bank, open(a.cache, 'wb'))
tr = bank.where('train')
cfg = config_for('tiny', input_shape=shape, tubelet=tub)
enc = OrganEncoder(cfg)
if a.arch in ('cnn', 'hmlp'):
    class CNNEnc(nn.Module):  # the supervised probe's CNN, as an organ encoder (same output contract)
        def __init__(s):
            super().__init__()
            c = [16, 32, 64, 96]
            s.stem = nn.Conv3d(1, 16, 3, padding=1)
            s.convs = nn.ModuleList([nn.Conv3d(c[i], c[i+1], 3, padding=1) for i in range(3)])
            s.bns = nn.ModuleList([nn.BatchNorm3d(c[i]) for i in range(4)])
            s.org = nn.Embedding(16, 192); s.head = nn.Sequential(nn.Linear(192, 192), nn.GELU(), nn.Linear(192, cfg.embed_dim))
        def forward(s, x, o):
            x = F.gelu(s.bns[0](s.stem(x)))
            for cv, bn in zip(s.convs, s.bns[1:]):
                x = F.max_pool3d(x, (1, 2, 2) if x.shape[2] < 8 else 2); x = F.gelu(bn(cv(x)))
            h = torch.cat([x.amax((2, 3, 4)), x.mean((2, 3, 4))], 1)
            return F.normalize(s.head(h + s.org(o)), dim=-1)
    if a.arch == 'cnn':
        enc = CNNEnc()
    else:
        k = 32
        enc.backbone.patch = nn.Sequential(nn.Conv3d(1, k, (1, 2, 2), (1, 2, 2)), nn.BatchNorm3d(k), nn.GELU(),
                                           nn.Conv3d(k, k, 2, 2), nn.BatchNorm3d(k), nn.GELU(), nn.Conv3d(k, 128, 2, 2))
if a.pool == 'mean':
    bb = enc.backbone
    bb.forward = lambda crop, oi: bb.encode_tokens(bb.embed(crop), oi)[:, 1:].mean(1)
if a.init:
    ck = torch.load(a.init, map_location='cpu', weights_only=False); enc.load_state_dict(ck['encoder'])
text = new_text_tower(cfg.embed_dim); text.freeze_base(0)
model = CLIPModel(enc, text, frozen_text_base=True)
if a.locked:  # lock the text side: PCA(-whitened) MiniLM features of the training sentences, projection frozen
    uniq = sorted({t for ts in tr.texts for t in ts})
    with torch.no_grad():
        model.encode_text(uniq, 'cpu')
        Fm = torch.stack([model._cache[t] for t in uniq]).double()
    mu = Fm.mean(0); U, S, V = torch.linalg.svd(Fm - mu, full_matrices=False)
    k = cfg.embed_dim; W = V[:k]
    if a.locked == 'white':
        W = W / (S[:k, None] / S[0]).sqrt()
    with torch.no_grad():
        text.proj.weight.copy_(W.float()); text.proj.bias.copy_(-(W @ mu).float())
    for p_ in text.proj.parameters(): p_.requires_grad_(False)
    print('locked text', len(uniq), 'sentences; top singular values', S[:5].tolist(), flush=True)
params = list(enc.parameters()) + [p for n, p in text.named_parameters() if p.requires_grad] + [model.logit_scale]
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.wd)
sc, off = (float(v) for v in a.aug.split(','))
class DS(D.BankDataset):
    def __getitem__(self, i):
        x = self.bank.x[i].astype(np.float32); rng = np.random.default_rng()
        x = x * rng.uniform(1 - sc, 1 + sc) + rng.uniform(-off, off)
        x = np.roll(x, tuple(int(s) for s in rng.integers(-1, 2, size=3)), axis=(1, 2, 3))
        t = self.bank.texts[i]
        return {"crop": torch.from_numpy(np.ascontiguousarray(x)), "organ_index": int(self.bank.organ[i]),
                "text": t[int(rng.integers(len(t)))] if t else "", "key": self.bank.key[i], "index": i}
ds = DS(tr)
# every model is scored twice: with the ontology's prompts and with each finding's negatives replaced by the organ's
# normal statements ("the liver is unremarkable") instead of "no X"
import dataclasses
plural = {"lungs", "kidneys", "adrenal_glands"}
def normals(o):
    d = ontology.organ(o).display.lower(); v = 'are' if o in plural else 'is'
    return (f"the {d} {v} unremarkable", f"normal {d}", f"the {d} {v} within normal limits")
FINDN = [dataclasses.replace(f, negative_prompts=normals(f.organs[0])) if not f.any_abnormality else f for f in ontology.FINDINGS]
FIND0 = list(ontology.FINDINGS)
def evaluate(FIND=FIND0):
    enc.eval(); text.eval()
    with torch.no_grad():
        encode = lambda x, oi: enc(torch.from_numpy(x), torch.from_numpy(oi)).numpy()
        val = Z.split_from_bank(bank, 'val', encode, cfg.embed_dim); test = Z.split_from_bank(bank, 'test', encode, cfg.embed_dim)
        embed_texts = lambda t: model.encode_text(list(t), 'cpu').numpy()
        specs, P = Z.finding_specs(embed_texts, FIND)
        r = Z.evaluate(val, test, specs, P, float(model.logit_scale.exp().clamp(max=100)), n_boot=1)  # macro figures only; no CIs
        e = test.embeddings['liver']; e = e[np.isfinite(e).all(1)]; spread = float((e @ e.T).mean())
    enc.train(); text.train()
    m = r['macro']
    return {'auroc': round(m['finding_auroc'], 3), 'cat': round(m['catalogue_auroc'], 3), 'n': m['finding_auroc_n'],
            'organ_f1': round(m['organ_f1'], 3), 'spread': round(spread, 3),
            'per': {k: round(v['auroc'], 2) for k, v in r['findings'].items() if np.isfinite(v['auroc'])}}
CAT = list(ontology.CATEGORY_FINDINGS)
ORGI = {o.name: i for i, o in enumerate(ontology.ORGANS)}
SCORED = torch.zeros(16, len(CAT))
for j, f in enumerate(CAT):
    for o in f.organs: SCORED[ORGI[o], j] = 1
TRAINED_NAMES = {f.name for j, f in enumerate(CAT) if j % 3 != 2}
HELD = {f.name for j, f in enumerate(CAT) if j % 3 == 2}  # every third catalogue finding stays zero-shot
TRAINED = torch.tensor([float(f.name not in HELD) for f in CAT])
step, t0, L = 0, time.time(), []
sched = lambda s: min(1, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / a.steps))
while step < a.steps:
    for bi in D.organ_batches(tr, a.bs, seed=step, require_text=True, abnormal_fraction=a.abfrac):
        if step >= a.steps: break
        for g in opt.param_groups: g['lr'] = a.lr * sched(step)
        bt = D.collate([ds[i] for i in bi])
        if a.loss == 'proto':  # image -> text-prototype classification over the batch's label keys (UniCL-style)
            img = enc(bt['crop'], bt['organ_index']); t = model.encode_text(bt['text'], 'cpu')
            ks = list(dict.fromkeys(bt['key'])); ki = torch.tensor([ks.index(k) for k in bt['key']])
            P = F.normalize(torch.stack([t[ki == j].mean(0) for j in range(len(ks))]), dim=-1)
            loss = F.cross_entropy(model.logit_scale.clamp(max=math.log(100)).exp() * img @ P.T, ki)
        else:
            loss, s = model(bt['crop'], bt['organ_index'], bt['text'], bt['key'])
        if a.loss == 'anchor':  # + prompt-supervised BCE on the non-held-out catalogue findings
            img = enc(bt['crop'], bt['organ_index'])
            Pp = F.normalize(torch.stack([model.encode_text(list(f.positive_prompts), 'cpu').mean(0) for f in CAT]), dim=-1)
            Pn = F.normalize(torch.stack([model.encode_text(list(f.negative_prompts), 'cpu').mean(0) for f in CAT]), dim=-1)
            lg = 10.0 * (img @ Pp.T - img @ Pn.T)
            Mk = SCORED[bt['organ_index']] * TRAINED[None, :]
            Yk = torch.tensor([[float(f.name in k.split('+')) for f in CAT] for k in bt['key']])
            loss = loss + (F.binary_cross_entropy_with_logits(lg, Yk, reduction='none', pos_weight=torch.tensor(4.0)) * Mk).sum() / Mk.sum().clamp(min=1)
        opt.zero_grad(); loss.backward(); opt.step(); L.append(loss.item()); step += 1
        if step % 25 == 0: print(step, round(np.mean(L[-25:]), 3), f'{time.time()-t0:.0f}s', flush=True)
        if a.eval_every and step % a.eval_every == 0 and step < a.steps:
            r = evaluate(); print('EVAL', step, {k: v for k, v in r.items() if k != 'per'}, flush=True)
rn = evaluate(FINDN); print('FINAL_NORMALNEG', json.dumps(rn), flush=True)
r = evaluate()
r['macro_heldout_zeroshot'] = round(float(np.mean([v for k, v in r['per'].items() if k in HELD])), 3)
r['macro_anchored'] = round(float(np.mean([v for k, v in r['per'].items() if k in TRAINED_NAMES])), 3)
r['tag'] = a.tag; r['steps'] = step; r['s'] = round(time.time() - t0)
print('FINAL', json.dumps(r), flush=True)
