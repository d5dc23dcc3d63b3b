"""Training data for the organ encoder: an in-memory bank of encoder inputs + their report sentences.

Sources:
- a pair dataset (``trainer.pairs.dataset.PairDataset``, built by ``totalfm train build-pairs``): crops are fitted
  to the encoder grid with :func:`appliance.preprocess.encoder_input` (the same function the appliance runs);
  sentences come from the ``pairs`` table (positive sentences of an abnormal organ, normal statements otherwise).
- synthetic studies generated in process (``from_synth``), for tests and quick runs without a pair dataset.

Training never reads truth.json: the label key of a crop (which other crops of the batch count as positives in the
multi-positive InfoNCE) comes from its report sentences only. Evaluation labels (``eval_labels``) come from
``PairDataset.organ_labels`` (truth when present).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from appliance import ontology
from appliance.preprocess import encoder_input, measurements_from_arrays, measurements_spec

ORGAN_INDEX = {o.name: i for i, o in enumerate(ontology.ORGANS)}
POSITIVE = ("positive",)
NORMALISH = ("normal", "negated")


@dataclass
class CropBank:
    input_shape: tuple[int, int, int]
    # also keep appliance.preprocess organ measurements (encoders that take them): False / True (current version) / a
    # count / a version name; stored as the version name (None: no measurements)
    measurements: bool | int | str | None = None
    x: list[np.ndarray] = field(default_factory=list)  # float16 [1,d,h,w] each
    m: list[np.ndarray] = field(default_factory=list)  # float32 [N_MEASUREMENTS] each (when measurements)
    organ: list[int] = field(default_factory=list)
    study: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)  # training sentences for this crop
    key: list[str] = field(default_factory=list)  # "normal" | "+".join(sorted positive findings) (from the report)
    labels: list[dict] = field(default_factory=list)  # eval truth {"abnormal": bool, "findings": [...]}

    def __post_init__(self):
        self.measurements = measurements_spec(self.measurements)

    def __len__(self):
        return len(self.x)

    def add(self, image: np.ndarray, organ: str, study: str, split: str, texts: list[str], key: str,
            label: dict | None = None, mask: np.ndarray | None = None):
        """``image``: the windowed crop on its recipe grid; ``mask``: its organ mask (needed with measurements)."""
        x, m = encoder_arrays(image, mask, organ, self.input_shape, self.measurements)
        self.add_encoded(x, m, organ, study, split, texts, key, label)

    def add_encoded(self, x: np.ndarray, m: np.ndarray | None, organ: str, study: str, split: str, texts: list[str],
                    key: str, label: dict | None = None):
        """Append a crop already turned into encoder inputs by :func:`encoder_arrays`."""
        self.x.append(x)
        if self.measurements:
            self.m.append(m)
        self.organ.append(ORGAN_INDEX[organ])
        self.study.append(study)
        self.split.append(split)
        self.texts.append(list(texts))
        self.key.append(key)
        self.labels.append(label or {})

    FIELDS = ("x", "organ", "study", "split", "texts", "key", "labels")

    def fields(self) -> tuple[str, ...]:
        return self.FIELDS + (("m",) if self.measurements else ())

    def subset(self, idx) -> "CropBank":
        b = CropBank(self.input_shape, self.measurements)
        for i in idx:
            for name in self.fields():
                getattr(b, name).append(getattr(self, name)[i])
        return b

    def extend(self, other: "CropBank") -> None:
        if other.measurements != self.measurements or tuple(other.input_shape) != tuple(self.input_shape):
            raise ValueError("cannot merge crop banks built for different encoder inputs")
        for name in self.fields():
            getattr(self, name).extend(getattr(other, name))

    def where(self, split: str) -> "CropBank":
        return self.subset([i for i, s in enumerate(self.split) if s == split])

    def summary(self) -> dict:
        return {"crops": len(self), "studies": len(set(self.study)),
                "abnormal_by_report": sum(k != "normal" for k in self.key),
                "with_text": sum(bool(t) for t in self.texts)}


def _key_and_texts(sents: list[tuple[str, str, str | None]]) -> tuple[str, list[str]]:
    """sentences about one organ of one study [(text, polarity|kind, finding)] -> (label key, training texts)."""
    pos = [(t, f) for t, p, f in sents if p in POSITIVE]
    if pos:
        return "+".join(sorted({f or "abnormal" for _, f in pos})), [t for t, _ in pos]
    return "normal", [t for t, p, _ in sents if p in NORMALISH]


def encoder_arrays(image: np.ndarray, mask: np.ndarray | None, organ: str, input_shape,
                   measurements: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """One crop on its organ recipe's grid -> (encoder input float16 [1,d,h,w], organ measurements float32 or None).
    The appliance's own functions, so a bank holds byte-for-byte what the appliance feeds the encoder."""
    x = encoder_input(image, input_shape).astype(np.float16)
    if not measurements:
        return x, None
    if mask is None:
        raise ValueError(f"a bank with measurements needs the organ mask of each crop ({organ})")
    # crops sit on their organ recipe's grid, in the trainer as in the appliance (appliance.crops)
    spacing = ontology.ORGANS_BY_NAME[organ].crop.spacing_mm
    return x, measurements_from_arrays(image, mask, spacing, organ, measurements)


def _encode_crops(path: str, jobs: list[tuple[int, str]], input_shape, measurements) -> list[tuple]:
    """Worker: [(crop_id, organ)] of a pair dataset -> [(x, m)], in order. Opens its own read-only connection."""
    from trainer.pairs.dataset import PairDataset
    with PairDataset(path) as ds:
        out = []
        for crop_id, organ in jobs:
            img, mask = ds.load_crop(crop_id)
            out.append(encoder_arrays(img, mask, organ, input_shape, measurements))
        return out


def from_pairs(path: str | Path, input_shape, splits=("train",), limit: int | None = None,
               with_labels: bool = False, measurements: bool | int | str = False, workers: int = 1) -> CropBank:
    """``workers`` > 1: the crops are decoded and measured in that many processes (one study's crops per task, so
    each worker reads a study's file once). Why: the v2 measurements cost ~30 ms a crop, so a 7,000-crop training
    bank took minutes in one process; val + test of the demo recipe (2,304 crops): 101 s with 1, 51 s with 2. The bank
    is the same whatever ``workers`` is (tests/trainer/test_pairs.py). The workers are spawned, so a script that
    calls this with ``workers`` > 1 needs the ``if __name__ == "__main__":`` guard (the CLIs have it)."""
    from trainer.pairs.dataset import USABLE, PairDataset
    bank = CropBank(tuple(input_shape), measurements)
    rows_meta: list[tuple] = []  # (crop_id, organ, study, split, texts, key, label), in bank order
    with PairDataset(path) as ds:
        for split in splits:
            by_crop: dict[int, list] = defaultdict(list)
            for p in ds.pairs(split=split):
                by_crop[p["crop_id"]].append((p["text"], p["kind"], p["finding"]))
            labels_cache: dict[str, dict] = {}
            rows = ds.crops(split=split, status=USABLE)
            if limit:
                rows = rows[:limit]
            for r in rows:
                key, texts = _key_and_texts(by_crop.get(r["crop_id"], []))
                label = None
                if with_labels:
                    if r["study_key"] not in labels_cache:
                        labels_cache[r["study_key"]] = ds.organ_labels(r["study_key"])
                    label = labels_cache[r["study_key"]].get(r["organ"])
                rows_meta.append((r["crop_id"], r["organ"], r["study_key"], split, texts, key, label))
    tasks: dict[str, list[tuple[int, str]]] = {}
    for crop_id, organ, study, *_ in rows_meta:
        tasks.setdefault(study, []).append((crop_id, organ))
    encoded: dict[int, tuple] = {}
    workers = max(1, min(int(workers), len(tasks)))
    if workers == 1:  # one pass, one connection; jobs stay grouped by study, so each study file is read once
        jobs = [j for js in tasks.values() for j in js]
        encoded.update(zip((c for c, _ in jobs), _encode_crops(str(path), jobs, input_shape, bank.measurements)))
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        from trainer.workers import init_worker
        # spawn: the parent may hold torch's thread pools, which a forked child must not inherit
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker,
                                 initargs=(os.getpid(),)) as ex:
            futs = [(jobs, ex.submit(_encode_crops, str(path), jobs, input_shape, bank.measurements))
                    for jobs in tasks.values()]
            for jobs, f in futs:
                encoded.update(zip((c for c, _ in jobs), f.result()))
    for crop_id, organ, study, split, texts, key, label in rows_meta:
        x, m = encoded[crop_id]
        bank.add_encoded(x, m, organ, study, split, texts, key, label)
    return bank


def split_of_seed(seed: int) -> str:
    return "train" if seed < 1000 else ("val" if seed < 2000 else "test")


def from_synth(n: int, seed: int, input_shape, kind: str = "analytic", phrasing: str = "train",
               normal_fraction: float = 0.3, shape=None, measurements: bool | int | str = False) -> CropBank:
    """Generate ``n`` studies in process (no files) and bank their usable crops. Split from the seed range."""
    from appliance.crops import crop_organs
    from trainer.synth.study import generate_study
    bank = CropBank(tuple(input_shape), measurements)
    split = split_of_seed(seed)
    for i in range(n):
        st = generate_study(kind, seed=seed, index=i, phrasing=phrasing, normal_fraction=normal_fraction, shape=shape)
        cs = crop_organs(st.image, st.labels)
        per_organ: dict[str, list] = defaultdict(list)
        for s in st.truth["sentences"]:
            if s.get("organ") and s.get("section") == "findings":
                per_organ[s["organ"]].append((s["text"], s["polarity"], s.get("finding")))
        truth_by_organ: dict[str, list] = defaultdict(list)
        for f in st.truth["findings"]:
            truth_by_organ[f["organ"]].append(f["finding"])
        for organ, crop in cs.present().items():
            key, texts = _key_and_texts(per_organ.get(organ, []))
            label = {"abnormal": bool(truth_by_organ.get(organ)), "findings": truth_by_organ.get(organ, [])}
            bank.add(crop.image.array, organ, f"{kind}-{seed}-{i:05d}", split, texts, key, label,
                     mask=crop.mask.array)
    return bank


def organ_batches(bank: CropBank, batch_size: int, seed: int = 0, require_text: bool = False,
                  abnormal_fraction: float = 0.0, organs_per_batch: int = 1) -> list[list[int]]:
    """Batches of ONE organ each (different studies), so an organ's negatives are same-organ crops of other studies.
    ``abnormal_fraction`` > 0: each batch holds up to that share of crops whose REPORT calls the organ abnormal
    (cycled, so rare findings are seen every epoch); without it most same-organ batches are all-normal and carry no
    contrastive signal. Organs with too few crops are pooled into mixed batches rather than dropped.

    ``organs_per_batch`` k > 1: each batch is k single-organ groups of ``batch_size // k`` crops, of k different
    organs. The contrastive loss still compares crops only within their organ group (``multi_positive_infonce``
    ``groups``); the mix is for BatchNorm in the encoder stem, whose batch statistics would otherwise be one organ's
    in training and every organ's at inference."""
    if organs_per_batch > 1:
        groups = organ_batches(bank, max(2, batch_size // organs_per_batch), seed, require_text, abnormal_fraction)
        return _merge_organ_groups(bank, groups, organs_per_batch)
    rng = random.Random(seed)
    by_organ: dict[int, list[int]] = defaultdict(list)
    for i in range(len(bank)):
        if require_text and not bank.texts[i]:
            continue
        by_organ[bank.organ[i]].append(i)
    batches, leftovers = [], []
    for _, idx in sorted(by_organ.items()):
        rng.shuffle(idx)
        ab = [i for i in idx if bank.key[i] != "normal"]
        k_ab = min(len(ab), int(round(batch_size * abnormal_fraction))) if abnormal_fraction > 0 else 0
        if k_ab > 0 and len(idx) >= batch_size:
            normal = [i for i in idx if bank.key[i] == "normal"]
            n_batches = max(1, len(idx) // batch_size)
            k_norm = batch_size - k_ab
            for b in range(n_batches):
                a = [ab[(b * k_ab + j) % len(ab)] for j in range(k_ab)]
                n = [normal[(b * k_norm + j) % len(normal)] for j in range(min(k_norm, len(normal)))]
                batches.append(a + n)
            continue
        full = len(idx) // batch_size * batch_size
        batches += [idx[j:j + batch_size] for j in range(0, full, batch_size)]
        rest = idx[full:]
        if len(rest) >= max(4, batch_size // 2):
            batches.append(rest)
        else:
            leftovers += rest
    rng.shuffle(leftovers)
    batches += [leftovers[j:j + batch_size] for j in range(0, len(leftovers) - 1, batch_size) if
                len(leftovers[j:j + batch_size]) >= 2]
    rng.shuffle(batches)
    return batches


def _merge_organ_groups(bank: CropBank, groups: list[list[int]], k: int) -> list[list[int]]:
    """Concatenate up to ``k`` single-organ groups of different organs per batch, in the (shuffled) group order."""
    pending, merged = list(groups), []
    while pending:
        batch = [pending.pop(0)]
        organs = {bank.organ[batch[0][0]]}
        j = 0
        while len(batch) < k and j < len(pending):
            organ = bank.organ[pending[j][0]]
            if organ in organs:
                j += 1
                continue
            organs.add(organ)
            batch.append(pending.pop(j))
        merged.append([i for g in batch for i in g])
    return merged


class BankDataset(Dataset):
    """Index -> dict(crop float32 [1,d,h,w], organ_index, text (one random sentence), key). Light augmentation on
    train: random intensity scale/offset and a +-1 voxel shift (keeps the crop's organ framing). ``pixels=False``:
    the crop is a placeholder ``[1]`` (a measurements-only model never reads it; copying crops would cost more than
    its whole step)."""

    def __init__(self, bank: CropBank, augment: bool = False, seed: int = 0, pixels: bool = True):
        self.bank, self.augment, self.seed, self.pixels = bank, augment, seed, pixels
        self.epoch_rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.bank)

    def __getitem__(self, i):
        texts = self.bank.texts[i]
        rng = np.random.default_rng((self.seed, i, int(torch.randint(0, 2**31 - 1, ()).item())))
        x = self.bank.x[i].astype(np.float32) if self.pixels else np.zeros(1, np.float32)
        if self.augment and self.pixels:
            x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
            shifts = tuple(int(s) for s in rng.integers(-1, 2, size=3))
            x = np.roll(x, shifts, axis=(1, 2, 3))
        text = texts[int(rng.integers(len(texts)))] if texts else ""
        item = {"crop": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "organ_index": int(self.bank.organ[i]), "text": text, "key": self.bank.key[i], "index": i}
        if self.bank.measurements:
            item["measurements"] = torch.from_numpy(self.bank.m[i])
        return item


def collate(items: list[dict]) -> dict:
    out = {"crop": torch.stack([it["crop"] for it in items]),
           "organ_index": torch.tensor([it["organ_index"] for it in items], dtype=torch.long),
           "text": [it["text"] for it in items], "key": [it["key"] for it in items],
           "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
    if items and "measurements" in items[0]:
        out["measurements"] = torch.stack([it["measurements"] for it in items])
    return out
