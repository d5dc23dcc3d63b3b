"""Session-5 diagnostic (docs/results/model.md, #5): does BatchNorm's running-statistics mismatch matter (one-organ
training batches vs every organ at inference)? Scores a contrastive checkpoint as trained, then again after
re-estimating the BatchNorm statistics on mixed-organ training crops. Not product code and not tested.

    python bench/experiments/precise_bn_check.py var/demo3/contrastive_v1/final.pt var/demo2/pairs [BANK_CACHE.pkl]
"""
import os, sys, pickle, numpy as np, torch
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from trainer.model import data as D
from trainer.model import checkpoint as ck
from trainer.evaluate import zeroshot as Z
from trainer.evaluate.cli import torch_encoders, prompt_supervised_findings
torch.set_num_threads(2)
path = sys.argv[1]
encode, embed_texts, scale, meta = torch_encoders(path)
cache = sys.argv[3] if len(sys.argv) > 3 else ''
if cache and os.path.exists(cache):
    bank = pickle.load(open(cache, 'rb'))
else:
    bank = D.from_pairs(sys.argv[2], tuple(meta['model_config']['input_shape']), splits=('train', 'val', 'test'), with_labels=True)
    if cache: pickle.dump(bank, open(cache, 'wb'))
enc, _ = ck.load_encoder(path)
ps = prompt_supervised_findings(meta)
def run(enc, tag):
    enc.eval()
    with torch.no_grad():
        f = lambda x, oi: enc(torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(oi)).numpy()
        val = Z.split_from_bank(bank, 'val', f, 128); test = Z.split_from_bank(bank, 'test', f, 128)
        specs, P = Z.finding_specs(embed_texts)
        r = Z.evaluate(val, test, specs, P, scale, n_boot=1, prompt_supervised=ps)
    m = r['macro']; print(tag, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items() if 'auroc' in k or 'f1' in k}, flush=True)
run(enc, 'as_trained')
tr = [i for i, s in enumerate(bank.split) if s == 'train']
rng = np.random.default_rng(0)
for m in enc.modules():
    if isinstance(m, torch.nn.BatchNorm3d): m.reset_running_stats(); m.momentum = None
enc.train()
with torch.no_grad():
    for _ in range(60):
        i = rng.choice(tr, 32, replace=False)
        enc(torch.from_numpy(np.stack([bank.x[j] for j in i]).astype(np.float32)), torch.tensor([bank.organ[j] for j in i]))
run(enc, 'precise_bn_mixed')
