"""Session-7 diagnostic (docs/results/model.md, #5): how far do plain organ measurements get without any learned image
features? Per crop, from the encoder-grid image and organ mask (the probe banks of supervised_probe.py MASK=1):
mask size, a 16-bin histogram of the windowed intensity inside the mask, mean/std/percentiles/max inside it, and the
same histogram in a 2-voxel shell around it. One logistic regression per catalogue finding on the train split
(report-derived labels), AUROC on the enriched test split (truth). Not product code and not tested.

    python bench/experiments/measurement_probe.py /tmp/exp 16x64x64
"""
import pickle, sys
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from appliance import ontology
from trainer.evaluate import metrics as M
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

d, tag = sys.argv[1], sys.argv[2]
tr = pickle.load(open(f'{d}/tr_{tag}.pkl', 'rb')); te = pickle.load(open(f'{d}/probe_{tag}.pkl', 'rb'))
mtr = pickle.load(open(f'{d}/trmask_{tag}.pkl', 'rb')); mte = pickle.load(open(f'{d}/probemask_{tag}.pkl', 'rb'))
EDGES = np.linspace(0, 1, 17)


def feats(x, m):
    x = x[0].astype(np.float32); m = m[0].astype(np.float32) > 0.5
    sh = (F.max_pool3d(torch.from_numpy(m[None].astype(np.float32)), 5, 1, 2)[0].numpy() > 0) & ~m
    v = x[m] if m.any() else np.zeros(1, np.float32); s = x[sh] if sh.any() else np.zeros(1, np.float32)
    h = np.histogram(v, EDGES)[0] / max(1, v.size); hs = np.histogram(s, EDGES)[0] / max(1, s.size)
    q = np.percentile(v, [1, 10, 50, 90, 99]); return np.concatenate([[np.log1p(m.sum()), v.mean(), v.std(), v.max()], q, h, hs, [s.mean()]])


def focal(x, m):
    """FOCAL=1: the largest hypo- and hyperdense blob inside the mask (smoothed image vs the organ median): log size
    and contrast of each, at two thresholds."""
    from scipy import ndimage
    x = ndimage.gaussian_filter(x[0].astype(np.float32), 1.0); m = m[0].astype(np.float32) > 0.5
    if not m.any(): return np.zeros(8)
    med = np.median(x[m]); out = []
    for t in (0.04, 0.08):
        for sign in (-1, 1):
            b = m & (sign * (x - med) > t)
            cc, n = ndimage.label(b)
            if n == 0: out += [0.0, 0.0]; continue
            sz = np.bincount(cc.ravel())[1:]; k = int(np.argmax(sz)) + 1
            out += [np.log1p(sz.max()), float(np.abs(x[cc == k] - med).mean())]
    return np.array(out)


Xtr = np.stack([feats(a, b) for a, b in zip(tr.x, mtr)]); Xte = np.stack([feats(a, b) for a, b in zip(te.x, mte)])
if __import__('os').environ.get('FOCAL') == '1':
    Xtr = np.concatenate([Xtr, np.stack([focal(a, b) for a, b in zip(tr.x, mtr)])], 1)
    Xte = np.concatenate([Xte, np.stack([focal(a, b) for a, b in zip(te.x, mte)])], 1)
FN = [f.name for f in ontology.CATEGORY_FINDINGS]; ORG = {o.name: i for i, o in enumerate(ontology.ORGANS)}
otr, ote = np.array(tr.organ), np.array(te.organ)
ytr_keys = [set(k.split('+')) for k in tr.key]
yte_keys = [set((l or {}).get('findings', [])) for l in te.labels]
out = {}
for f in ontology.CATEGORY_FINDINGS:
    o = ORG[f.organs[0]]
    a, b = otr == o, ote == o
    y = np.array([f.name in k for k, s in zip(ytr_keys, a) if s]); yt = np.array([f.name in k for k, s in zip(yte_keys, b) if s])
    if y.sum() < 2 or yt.sum() == 0:
        out[f.name] = (float('nan'), int(yt.sum())); continue
    sc = StandardScaler().fit(Xtr[a]); clf = LogisticRegression(C=1.0, max_iter=2000, class_weight='balanced')
    clf.fit(sc.transform(Xtr[a]), y)
    out[f.name] = (round(M.auroc(yt, clf.decision_function(sc.transform(Xte[b]))), 3), int(yt.sum()))
print('MEASUREMENTS macro', round(np.nanmean([v[0] for v in out.values()]), 3), out)
