"""Organ-volume / sentence pairs: `build_pairs` turns studies (image + report [+ labels]) into a queryable dataset.

DATASET/index.sqlite (tables: studies, crops, sentences, pairs, labels, runs, log) + DATASET/crops/<study_key>.npz
(float16 image windowed 0..1 and uint8 mask per organ, compressed). Read it with `PairDataset`.
"""

from trainer.pairs.build import build_pairs
from trainer.pairs.dataset import PairDataset

__all__ = ["build_pairs", "PairDataset"]
