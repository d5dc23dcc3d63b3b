"""Session-6 diagnostic (docs/results/model.md, #5): how many crops of one organ does a small BatchNorm CNN need before
it finds one focal finding? Binary BCE for FINDING on ORGAN crops, 32 crops per step, test AUROC every EVERY steps on
the enriched split. MIX=1 draws batches from every organ's crops (the loss still only on ORGAN's), as the multi-organ
encoder sees them. Not product code and not tested. Reads the banks that supervised_probe.py caches (its 5th argument;
CACHE, default /tmp/exp). Example:

    EVERY=5 THREADS=2 python bench/experiments/single_finding_probe.py gallbladder gallstones 100
"""
import os, pickle, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from appliance import ontology
from trainer.evaluate import metrics as M
torch.set_num_threads(int(os.environ.get('THREADS', '2'))); torch.manual_seed(0)
CACHE = os.environ.get('CACHE', '/tmp/exp')
organ, finding = sys.argv[1], sys.argv[2]; steps = int(sys.argv[3]); MASK = os.environ.get('MASK') == '1'
tr = pickle.load(open(CACHE + '/tr_16x64x64.pkl', 'rb')); te = pickle.load(open(CACHE + '/probe_16x64x64.pkl', 'rb'))
if MASK:
    mtr = pickle.load(open(CACHE + '/trmask_16x64x64.pkl', 'rb')); mte = pickle.load(open(CACHE + '/probemask_16x64x64.pkl', 'rb'))
else:
    mtr = mte = None
oi = [o.name for o in ontology.ORGANS].index(organ)
MIX = os.environ.get('MIX') == '1'  # train on every organ's crops (loss on the target organ's only): BatchNorm sees a mix
def sel(b, ms, lab, train=False):
    idx = [i for i in range(len(b)) if b.organ[i] == oi or (train and MIX)]
    x = np.stack([np.concatenate([b.x[i], ms[i]]) if MASK else b.x[i] for i in idx]).astype(np.float32)
    y = np.array([lab(b, i) for i in idx], np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)
xtr, ytr = sel(tr, mtr, lambda b, i: finding in b.key[i].split('+'), train=True)
otr = torch.tensor([tr.organ[i] for i in range(len(tr)) if tr.organ[i] == oi or MIX])
xte, yte = sel(te, mte, lambda b, i: finding in (b.labels[i] or {}).get('findings', []))
print('train', xtr.shape, int(ytr.sum()), 'test', xte.shape, int(yte.sum()), flush=True)
c = [16, 32, 64, 96]; inch = 2 if MASK else 1
net = nn.Sequential(nn.Conv3d(inch, 16, 3, padding=1), nn.BatchNorm3d(16), nn.GELU(), nn.MaxPool3d((1, 2, 2)),
                    nn.Conv3d(16, 32, 3, padding=1), nn.BatchNorm3d(32), nn.GELU(), nn.MaxPool3d(2),
                    nn.Conv3d(32, 64, 3, padding=1), nn.BatchNorm3d(64), nn.GELU(), nn.MaxPool3d(2),
                    nn.Conv3d(64, 96, 3, padding=1), nn.BatchNorm3d(96), nn.GELU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(96, 1))
opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4); rng = np.random.default_rng(0); t0 = time.time()
pw = torch.tensor(float(((otr == oi).sum() - ytr.sum()) / ytr.sum()))
def ev():
    net.eval()
    with torch.no_grad(): s = torch.cat([net(xte[j:j+32]).squeeze(1) for j in range(0, len(xte), 32)]).numpy()
    net.train(); return round(M.auroc(yte.numpy(), s), 3)
for st in range(steps):
    i = rng.choice(len(xtr), 32, replace=False)
    w = (otr[i] == oi).float()
    loss = (F.binary_cross_entropy_with_logits(net(xtr[i]).squeeze(1), ytr[i], pos_weight=pw, reduction='none') * w).sum() / w.sum().clamp(min=1)
    opt.zero_grad(); loss.backward(); opt.step()
    if (st + 1) % int(os.environ.get('EVERY', '50')) == 0: print(st + 1, round(loss.item(), 3), 'test auroc', ev(), f'{time.time()-t0:.0f}s', flush=True)
