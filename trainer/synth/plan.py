"""Which findings a synthetic study gets: a configurable share of normal studies, otherwise 1-4 findings drawn by
prevalence with the co-occurrences a radiologist expects (ascites with organomegaly, coronary with aortic calcium
rising with age, effusion with atelectasis, metastases with nodes, ...). Training sets may instead use the enriched
plan (``per_study``), which trades realism for positives per finding."""

from __future__ import annotations

import numpy as np

from appliance.ontology import CATEGORY_FINDINGS

# relative prevalence among abnormal studies (rough order of magnitude in an adult CT population)
PREVALENCE = {f.name: 1.0 for f in CATEGORY_FINDINGS}
PREVALENCE.update({"hepatic_steatosis": 3, "renal_cyst": 3, "atherosclerosis": 3, "coronary_calcification": 2.5,
                   "liver_lesion": 2.5, "lung_nodule": 2.5, "gallstones": 2, "osteopenia": 2, "kidney_stone": 1.5,
                   "pleural_effusion": 1.5, "atelectasis": 1.5, "free_air": 0.4, "aortic_aneurysm": 0.6,
                   "bowel_obstruction": 0.6})
# (if this is present, add that) with probability p
CO_OCCUR = [("splenomegaly", "ascites", 0.45), ("hepatomegaly", "ascites", 0.35), ("hepatomegaly",
            "hepatic_steatosis", 0.4), ("pleural_effusion", "atelectasis", 0.6), ("metastatic_disease",
            "lymphadenopathy", 0.4), ("bowel_obstruction", "bowel_wall_thickening", 0.3), ("atherosclerosis",
            "coronary_calcification", 0.5), ("aortic_aneurysm", "atherosclerosis", 0.7), ("cardiomegaly",
            "pleural_effusion", 0.3), ("osteopenia", "fracture", 0.25)]


def sample_findings(rng: np.random.Generator, *, age: int, sex: str, normal_fraction: float = 0.3,
                    per_study: tuple[int, int] | None = None) -> list[str]:
    """``per_study=(lo, hi)``: an ENRICHED training plan (see :func:`_enriched`); None: the realistic plan above."""
    if rng.random() < normal_fraction:
        return []
    if per_study is not None:
        return _enriched(rng, sex=sex, per_study=per_study)
    names = list(PREVALENCE)
    w = np.array([PREVALENCE[n] for n in names], dtype=np.float64)
    old = np.clip((age - 40) / 40.0, 0, 1)  # age raises calcification, osteopenia, prostate size
    for n, gain in (("atherosclerosis", 3), ("coronary_calcification", 3), ("osteopenia", 2),
                    ("prostatomegaly", 2), ("aortic_aneurysm", 1)):
        w[names.index(n)] *= 1 + gain * old
    if sex != "male":
        w[names.index("prostatomegaly")] = 0
    k = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    chosen = [str(n) for n in rng.choice(names, size=k, replace=False, p=w / w.sum())]
    for a, b, p in CO_OCCUR:
        if a in chosen and b not in chosen and rng.random() < p:
            chosen.append(b)
    return _insertion_order(chosen)


# enlargements first so later lesions land in the enlarged organ and stay inside their recorded boxes
_FIRST = ("hepatomegaly", "splenomegaly", "cardiomegaly", "prostatomegaly", "pancreatic_atrophy", "aortic_aneurysm")
_ORDER = {n: i for i, n in enumerate(PREVALENCE)}
_PRIMARY_ORGAN = {f.name: f.organs[0] for f in CATEGORY_FINDINGS}


def _insertion_order(chosen: list[str]) -> list[str]:
    return sorted(chosen, key=lambda n: (n not in _FIRST, _ORDER[n]))


def _enriched(rng: np.random.Generator, *, sex: str, per_study: tuple[int, int]) -> list[str]:
    """Training-set enrichment: lo..hi findings per abnormal study, drawn with EQUAL weight, then the realistic
    co-occurrences (``CO_OCCUR``). Why: under the realistic plan a 100-study training set holds 1-20 positive crops
    per finding (measured on the demo data), too few to learn a lesion from; enrichment multiplies that without more
    studies to synthesise. Validation and test keep the realistic plan, so the reported metrics are measured at
    realistic prevalence.

    Until session 17 this plan drew at most one finding per primary organ, to spread the positives over the crops.
    That taught the model that two findings of one organ never meet: on the 320-study realistic test the shipped
    encoder's fracture score ranked the osteopenic spines BELOW the normal ones (AUROC 0.007 for osteopenia), and
    11 of the 16 fractures sit in osteopenic spines, so fracture scored 0.31 overall and 0.81 without osteopenia.
    Findings of one organ now co-occur as they do in patients."""
    lo, hi = int(per_study[0]), int(per_study[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"findings per study must be 1 <= lo <= hi, got {per_study}")
    names = [f.name for f in CATEGORY_FINDINGS if sex == "male" or f.name != "prostatomegaly"]
    k = int(rng.integers(lo, hi + 1))
    chosen = [str(n) for n in rng.choice(names, size=min(k, len(names)), replace=False)]
    for a, b, p in CO_OCCUR:
        if a in chosen and b not in chosen and rng.random() < p and (sex == "male" or b != "prostatomegaly"):
            chosen.append(b)
    return _insertion_order(chosen)
