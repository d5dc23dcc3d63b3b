"""Session-4 diagnostic (docs/results/model.md, #5): a supervised multi-label probe - which findings can an image
model learn from the crops at a given encoder grid in N steps? Not product code and not tested. Example:

    ARCH=cnn|vit|vit_hmlp|vit_conv|vit_int|hybrid python bench/experiments/supervised_probe.py 16,64,64 300 \
        var/demo2/pairs var/probe3000/pairs var/probe_cache

Environment: LR (default 2e-3), WU (warm-up steps, default 0), POOL=mean (ViT: mean of the patch tokens instead of
CLS), THREADS (default 1), K (vit_int channels, default 16). Session 5's rows: vit LR=5e-4 WU=30 POOL=mean; vit_conv
and hybrid LR=1e-3 WU=30 (vit_conv POOL=mean); vit_int LR=5e-4 WU=30 POOL=mean; all THREADS=2.

TRAIN_PAIRS: its train split (report-derived labels); PROBE_PAIRS: its test split (truth labels), e.g. 96 enriched
studies from `totalfm synth --seed 3000 --findings-per-study 3,6 --phrasing heldout` + `totalfm train build-pairs`.
"""
import os, pickle, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from appliance import ontology
from trainer.model import data as D
from trainer.evaluate import metrics as M
shape = tuple(int(v) for v in sys.argv[1].split(',')); steps = int(sys.argv[2]); torch.set_num_threads(int(os.environ.get('THREADS','1'))); torch.manual_seed(0)
tag = 'x'.join(map(str, shape))
def bank(path, split, cache, labels):
    if os.path.exists(cache): return pickle.load(open(cache, 'rb'))
    b = D.from_pairs(path, shape, splits=(split,), with_labels=labels); pickle.dump(b, open(cache, 'wb')); return b
t0 = time.time()
cache_dir = sys.argv[5]; os.makedirs(cache_dir, exist_ok=True)
tr = bank(sys.argv[3], 'train', f'{cache_dir}/tr_{tag}.pkl', False)
te = bank(sys.argv[4], 'test', f'{cache_dir}/probe_{tag}.pkl', True)
print('banks', len(tr), len(te), f'{time.time()-t0:.0f}s', flush=True)
MASK = os.environ.get('MASK') == '1'  # session 6: the organ mask, fitted to the grid, as a second input channel
def mask_bank(path, split, cache):
    if os.path.exists(cache): return pickle.load(open(cache, 'rb'))
    from trainer.pairs.dataset import USABLE, PairDataset
    from appliance.preprocess import fit_to_shape
    with PairDataset(path) as ds:  # the same crop order as D.from_pairs
        ms = [fit_to_shape(ds.load_crop(r['crop_id'])[1], shape)[None].astype(np.float16)
              for r in ds.crops(split=split, status=USABLE)]
    pickle.dump(ms, open(cache, 'wb')); return ms
HARD = os.environ.get('MASK') == 'hard'  # session 7: voxels outside the organ mask (dilated DIL grid voxels) set to 0
if HARD:
    DIL = int(os.environ.get('DIL', '1'))
    def hard(xs, ms):
        out = []
        for a, b in zip(xs, ms):
            m = torch.from_numpy(b.astype(np.float32))[None] > 0.5
            if DIL: m = F.max_pool3d(m.float(), 2 * DIL + 1, 1, DIL) > 0
            out.append((a * m[0].numpy()).astype(np.float16))
        return out
    tr.x = hard(tr.x, mask_bank(sys.argv[3], 'train', f'{cache_dir}/trmask_{tag}.pkl'))
    te.x = hard(te.x, mask_bank(sys.argv[4], 'test', f'{cache_dir}/probemask_{tag}.pkl'))
    tag += f'_hard{DIL}'
if MASK:
    mtr = mask_bank(sys.argv[3], 'train', f'{cache_dir}/trmask_{tag}.pkl')
    mte = mask_bank(sys.argv[4], 'test', f'{cache_dir}/probemask_{tag}.pkl')
    assert len(mtr) == len(tr) and len(mte) == len(te)
    tr.x = [np.concatenate([a, b]) for a, b in zip(tr.x, mtr)]; te.x = [np.concatenate([a, b]) for a, b in zip(te.x, mte)]
    tag += '_mask'

STATS = os.environ.get('STATS') in ('1', '2')  # session 7: organ measurements (measurement_probe.feats): 1 = one extra
STATS2 = os.environ.get('STATS') == '2'  # token; 2 = a per-organ linear readout concatenated to the pooled feature
if STATS:
    sys.path.insert(0, os.path.dirname(__file__))
    sys.argv_saved = sys.argv; sys.argv = [sys.argv[0], cache_dir, tag]
    import measurement_probe as MP  # computes Xtr / Xte on import (banks from cache_dir)
    sys.argv = sys.argv_saved
    mu, sd = MP.Xtr.mean(0), MP.Xtr.std(0) + 1e-6
    str_ = torch.from_numpy(((MP.Xtr - mu) / sd).astype(np.float32)); ste = torch.from_numpy(((MP.Xte - mu) / sd).astype(np.float32))
    tag += '_stats' + ('2' if STATS2 else '')
FN = [f.name for f in ontology.CATEGORY_FINDINGS]; FI = {n: i for i, n in enumerate(FN)}
ORG = {o.name: i for i, o in enumerate(ontology.ORGANS)}
scored = torch.zeros(16, len(FN))  # which findings are scored in which organ crop
for f in ontology.CATEGORY_FINDINGS:
    for o in f.organs: scored[ORG[o], FI[f.name]] = 1
def Y(keys):
    y = torch.zeros(len(keys), len(FN))
    for i, k in enumerate(keys):
        if k != 'normal':
            for n in k.split('+'):
                if n in FI: y[i, FI[n]] = 1
    return y
xtr = tr.x; otr = torch.tensor(tr.organ); ytr = Y(tr.key)
yte = Y(['+'.join((l or {}).get('findings', [])) or 'normal' for l in te.labels]); ote = torch.tensor(te.organ)
big = shape[1] > 64
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Conv3d(2 if MASK else 1, 16, 3, stride=(1, 2, 2) if big else 1, padding=1)
        c = [16, 32, 64, 96]
        s.convs = nn.ModuleList([nn.Conv3d(c[i], c[i+1], 3, padding=1) for i in range(3)])
        s.bns = nn.ModuleList([nn.BatchNorm3d(c[i]) for i in range(4)])
        s.org = nn.Embedding(16, 192); s.head = nn.Linear(192, len(FN))
    def forward(s, x, o):
        x = F.gelu(s.bns[0](s.stem(x)))
        for cv, bn in zip(s.convs, s.bns[1:]):
            x = F.max_pool3d(x, (1, 2, 2) if x.shape[2] < 8 else 2); x = F.gelu(bn(cv(x)))
        h = torch.cat([x.amax((2, 3, 4)), x.mean((2, 3, 4))], 1)
        return s.head(h + s.org(o))
arch = os.environ.get('ARCH', 'cnn')
class Hybrid(nn.Module):
    def __init__(s):
        super().__init__()
        from trainer.model.vit3d import Block
        s.cnn = Net(); s.proj = nn.Linear(96, 128); s.pos = nn.Parameter(torch.randn(1, 256, 128) * 0.02)
        s.org = nn.Embedding(16, 128); s.blocks = nn.ModuleList(Block(128, 4) for _ in range(2)); s.norm = nn.LayerNorm(128)
        s.head = nn.Linear(256 + (128 if STATS2 else 0), len(FN))
        if STATS: s.stats = nn.Sequential(nn.Linear(str_.shape[1], 128), nn.GELU(), nn.Linear(128, 128))
        if STATS2: s.ro = nn.Parameter(torch.randn(16, str_.shape[1], 128) * str_.shape[1] ** -0.5)
    def forward(s, x, o, st=None):
        c = s.cnn
        x = F.gelu(c.bns[0](c.stem(x)))
        for cv, bn in zip(c.convs, c.bns[1:]):
            x = F.max_pool3d(x, (1, 2, 2) if x.shape[2] < 8 else 2); x = F.gelu(bn(cv(x)))
        t = s.proj(x.flatten(2).transpose(1, 2)) + s.pos + s.org(o)[:, None]
        if STATS and not STATS2: t = torch.cat([(s.stats(st) + s.org(o))[:, None], t], 1)
        for b in s.blocks: t = b(t)
        t = s.norm(t)
        if STATS2: return s.head(torch.cat([t.mean(1), t.amax(1), torch.einsum('bk,bkd->bd', st, s.ro[o])], 1))
        return s.head(torch.cat([t.mean(1), t.amax(1)], 1))
if arch.startswith('vit'):
    from trainer.model.vit3d import OrganViT, config_for
    class VNet(nn.Module):
        def __init__(s):
            super().__init__(); s.bb = OrganViT(config_for('tiny', input_shape=shape)); s.head = nn.Linear(128, len(FN))
            if arch == 'vit_conv':
                def cb(i, o, st): return [nn.Conv3d(i, o, 3, st, 1), nn.GroupNorm(8, o), nn.GELU()]
                s.bb.patch = nn.Sequential(*cb(1, 16, (1, 2, 2)), *cb(16, 32, 2), *cb(32, 64, 2), nn.Conv3d(64, 128, 1))
            if arch == 'vit_int':
                K = int(os.environ.get('K', '16'))
                s.bb.patch = nn.Sequential(nn.Conv3d(1, K, 1), nn.GELU(), nn.Conv3d(K, 128, (4, 8, 8), (4, 8, 8)))
            if arch == 'vit_hmlp':
                c = 32
                s.bb.patch = nn.Sequential(nn.Conv3d(1, c, (1, 2, 2), (1, 2, 2)), nn.BatchNorm3d(c), nn.GELU(),
                                           nn.Conv3d(c, c, 2, 2), nn.BatchNorm3d(c), nn.GELU(), nn.Conv3d(c, 128, 2, 2))
        def forward(s, x, o):
            if os.environ.get('POOL') == 'mean':
                return s.head(s.bb.encode_tokens(s.bb.embed(x), o)[:, 1:].mean(1))
            return s.head(s.bb(x, o))
    net = VNet()
elif arch == 'hybrid':
    net = Hybrid()
else:
    net = Net()
tag = tag + '_' + arch
opt = torch.optim.AdamW(net.parameters(), 2e-3 if arch == 'cnn' else 1e-3, weight_decay=1e-4)
rng = np.random.default_rng(0); t0 = time.time()
for st in range(steps):
    i = rng.choice(len(xtr), 32, replace=False)
    x = torch.from_numpy(np.stack([xtr[j] for j in i]).astype(np.float32)); o = otr[i]
    m = scored[o]
    loss = (F.binary_cross_entropy_with_logits(net(x, o, str_[i]) if STATS else net(x, o), ytr[i], reduction='none', pos_weight=torch.tensor(8.0)) * m).sum() / m.sum()
    LR = float(os.environ.get('LR', '2e-3')); WU = int(os.environ.get('WU', '0'))
    for g in opt.param_groups: g['lr'] = LR * min(1.0, (st + 1) / max(1, WU)) * 0.5 * (1 + np.cos(np.pi * st / steps))
    opt.zero_grad(); loss.backward(); opt.step()
    if st % 50 == 49: print(st + 1, round(loss.item(), 3), f'{time.time()-t0:.0f}s', flush=True)
net.eval(); S = []
with torch.no_grad():
    for j in range(0, len(te), 32):
        xb = torch.from_numpy(np.stack(te.x[j:j+32]).astype(np.float32))
        S.append(torch.sigmoid(net(xb, ote[j:j+32], ste[j:j+32]) if STATS else net(xb, ote[j:j+32])))
S = torch.cat(S).numpy(); out = {}
for f in ontology.CATEGORY_FINDINGS:
    k = (ote.numpy() == ORG[f.organs[0]]); y = yte.numpy()[k, FI[f.name]]
    out[f.name] = (round(M.auroc(y, S[k, FI[f.name]]), 3), int(y.sum()))
print('PROBE', tag, 'macro', round(np.nanmean([v[0] for v in out.values()]), 3), out, f'{time.time()-t0:.0f}s', flush=True)
