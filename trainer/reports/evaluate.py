"""Evaluate the report parsers against gold reports: sentence split F1 and per-field label accuracy, per engine.

Gold reports are dicts {"text": str, "sentences": [{"text", "section", "organ", "polarity", "finding", "phase"}]}:
our hand-written set (tests/trainer/data/report_gold.json) or the synthetic report writer's held-out phrasing
(trainer.synth, when installed). Two separate measurements, so a split error is not counted twice:
- split: our sentences vs the gold sentences, matched by normalised text (precision, recall, F1);
- labels: each engine labels the *gold* sentences (with their gold section), compared field by field.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.reports import rules
from trainer.reports.labels import Sentence, SentenceLabel
from trainer.reports.splitter import normalise_for_match, split_sentences

FIELDS = ("organ", "polarity", "finding", "phase")


def load_gold(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text())
    for i, r in enumerate(data):
        if "text" not in r or "sentences" not in r:
            raise ValueError(f"{path}: report {i} needs 'text' and 'sentences'")
    return data


def gold_from_written_report(report) -> dict:
    """A trainer.synth report (``.text``, ``.sentences`` as dicts with our six keys) as a gold dict."""
    sents = [{k: s.get(k) for k in ("text", "section", "organ", "polarity", "finding", "phase")}
             for s in report.sentences]
    return {"text": report.text, "sentences": sents}


def sample_report_truth(rng) -> dict:
    """A study truth with the fields the report writer reads, drawn like trainer.synth.study.generate_study does
    (same finding sampler, age, sex and phase odds) but without rendering a phantom: rendering costs seconds per study
    and changes nothing in the text. Organ, size, severity and laterality are drawn here."""
    from appliance.ontology import FINDINGS_BY_NAME, ORGAN_NAMES, ORGANS_BY_NAME
    from trainer.synth.phantom import PHASES
    from trainer.synth.plan import sample_findings

    age = int(rng.integers(25, 90))
    sex = str(rng.choice(["male", "female"]))
    phase = str(rng.choice(PHASES, p=[0.25, 0.2, 0.55]))
    records = []
    for name in sample_findings(rng, age=age, sex=sex):
        organ = str(rng.choice(FINDINGS_BY_NAME[name].organs))
        records.append({
            "finding": name, "organ": organ, "inserted": True,
            "size_mm": round(float(rng.uniform(4, 45)), 1),
            "severity": str(rng.choice(["mild", "moderate", "severe"])),
            "laterality": str(rng.choice(["left", "right", "bilateral"])) if ORGANS_BY_NAME[organ].paired else None,
        })
    volumes = {o: (0.0 if o == "prostate" and sex == "female" else 100.0) for o in ORGAN_NAMES}
    return {"age": age, "sex": sex, "phase": phase, "findings": records, "organ_volumes_ml": volumes}


def synth_heldout_reports(n: int, seed: int = 0) -> list[dict]:
    """n reports in the synthetic writer's held-out phrasing (trainer.synth.report), as gold dicts."""
    import numpy as np

    from trainer.synth.report import write_report  # noqa: PLC0415 - another engineer's package, optional here

    rng = np.random.default_rng(seed)
    return [gold_from_written_report(write_report(sample_report_truth(rng), rng, phrasing="heldout"))
            for _ in range(n)]


def split_scores(reports: Iterable[dict]) -> dict:
    tp = n_pred = n_gold = 0
    for r in reports:
        pred = Counter(normalise_for_match(s.text) for s in split_sentences(r["text"]))
        gold = Counter(normalise_for_match(s["text"]) for s in r["sentences"])
        tp += sum((pred & gold).values())
        n_pred += sum(pred.values())
        n_gold += sum(gold.values())
    p = tp / n_pred if n_pred else 0.0
    rc = tp / n_gold if n_gold else 0.0
    return {"split_precision": p, "split_recall": rc, "split_f1": 2 * p * rc / (p + rc) if p + rc else 0.0}


@dataclass
class EngineResult:
    engine: str
    n_sentences: int = 0
    correct: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    labels: list[SentenceLabel] = field(default_factory=list)  # every label given, in gold order

    def accuracy(self, f: str) -> float:
        return self.correct[f] / self.n_sentences if self.n_sentences else 0.0

    def as_dict(self) -> dict:
        return {
            "engine": self.engine,
            "n_sentences": self.n_sentences,
            **{f"{f}_accuracy": round(self.accuracy(f), 4) for f in FIELDS},
            "all_fields_accuracy": round(self.accuracy("all"), 4),
            "seconds": round(self.seconds, 3),
            "sentences_per_s": round(self.n_sentences / self.seconds, 2) if self.seconds else None,
            **self.extra,
            "first_errors": self.errors[:15],
        }


# An engine: labels one report's gold sentences at once (the LLM's "report" mode needs the whole list).
Labeller = Callable[[list[Sentence]], list[SentenceLabel]]


def rule_labeller(sentences: list[Sentence]) -> list[SentenceLabel]:
    return [rules.label_sentence(s) for s in sentences]


def _gold_sentences(report: dict) -> list[Sentence]:
    """Gold sentences as Sentence objects; the sub-heading comes from our splitter where it finds the same text."""
    ours = {normalise_for_match(s.text): s.heading for s in split_sentences(report["text"])}
    return [Sentence(g["text"], g.get("section") or "body", 0, 0, heading=ours.get(normalise_for_match(g["text"]), ""))
            for g in report["sentences"]]


def evaluate_labeller(name: str, labeller: Labeller, reports: list[dict]) -> EngineResult:
    res = EngineResult(name)
    for r in reports:
        sents = _gold_sentences(r)
        t0 = time.perf_counter()
        labels = labeller(sents)
        res.seconds += time.perf_counter() - t0
        res.labels.extend(labels)
        for g, lab in zip(r["sentences"], labels):
            res.n_sentences += 1
            got = dict(zip(FIELDS, lab.key()))
            ok = {f: got[f] == g.get(f) for f in FIELDS}
            for f, good in ok.items():
                res.correct[f] += good
            res.correct["all"] += all(ok.values())
            if not all(ok.values()):
                res.errors.append({"text": g["text"], "gold": {f: g.get(f) for f in FIELDS},
                                   "got": {f: got[f] for f in FIELDS if not ok[f]}})
    return res


def agreement(a: list[SentenceLabel], b: list[SentenceLabel]) -> dict:
    """Per-field disagreement counts between two engines' labels of the same sentences."""
    out = Counter()
    for x, y in zip(a, b):
        for f, u, v in zip(FIELDS, x.key(), y.key()):
            out[f] += u != v
    return {f: out[f] for f in FIELDS}


def format_table(split: dict, results: list[EngineResult], title: str) -> str:
    head = (f"{'engine':42s} {'n':>5s} {'split F1':>8s} {'organ':>6s} {'polar.':>6s} {'finding':>7s} {'phase':>6s} "
            f"{'all':>6s} {'sent/s':>7s}")
    lines = [title, head, "-" * len(head)]
    for r in results:
        sps = r.n_sentences / r.seconds if r.seconds else float("nan")
        lines.append(f"{r.engine:42s} {r.n_sentences:5d} {split['split_f1']:8.3f} {r.accuracy('organ'):6.3f} "
                     f"{r.accuracy('polarity'):6.3f} {r.accuracy('finding'):7.3f} {r.accuracy('phase'):6.3f} "
                     f"{r.accuracy('all'):6.3f} {sps:7.1f}")
    return "\n".join(lines)


def evaluate(reports: list[dict], labellers: dict[str, Labeller], *, title: str = "") -> dict:
    """Split scores plus one EngineResult per labeller; the LLM rows also count disagreements with the rules."""
    split = split_scores(reports)
    results = [evaluate_labeller(name, fn, reports) for name, fn in labellers.items()]
    rule_res = next((r for r in results if r.engine == "rules"), None)
    if rule_res is not None:
        for res in results:
            if res is not rule_res:
                res.extra["disagreements_with_rules"] = agreement(res.labels, rule_res.labels)
    return {"title": title, "n_reports": len(reports), **{k: round(v, 4) for k, v in split.items()},
            "engines": [r.as_dict() for r in results], "_results": results, "_split": split}
