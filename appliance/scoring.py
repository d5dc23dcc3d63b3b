"""Zero-shot finding scores from organ embeddings and prompt embeddings. numpy only; the trainer's evaluation calls
these SAME functions (``trainer.evaluate.zeroshot``), so a threshold picked there means the same thing here.

The score, decided and documented:

1. For one organ crop with embedding ``e`` (L2-normalised, [E]) and a finding with positive prompts ``P+`` and
   negative prompts ``P-`` (rows of ``prompt_embeddings``, L2-normalised), the CLIP logits are
   ``s * cos(e, p)`` with ``s = logit_scale`` (the exp'd learned temperature).
2. Prompt ensemble: the logits are AVERAGED over the phrasings of each side:
   ``L+ = mean_p s*cos(e, p in P+)``, ``L- = mean_p s*cos(e, p in P-)``. (Averaging logits rather than
   probabilities keeps each side a linear function of ``e``: it equals the logit against the mean prompt vector.)
3. Probability of the finding = 2-way softmax over ``[L+, L-]`` = ``sigmoid(L+ - L-)``, in (0, 1).
4. A finding scored in several organ crops (``FindingSpec.organs``, e.g. ascites in liver and spleen, metastatic
   disease in liver/lungs/spine) takes the MAXIMUM over the organs whose crop was encoded - present if present
   anywhere. Organs without an embedding (absent, truncated, too small) are skipped; a finding with none of its
   organs available gets no score at all (the caller reports "not assessable", never a silent 0).
5. ``decide(score, threshold)`` = ``score >= threshold``; thresholds are picked on the validation split by the
   trainer (max F1) and shipped in the bundle (``FindingSpec.threshold``).

AI draft for radiologist review - not a diagnosis.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import numpy as np

DISCLAIMER = "AI draft for radiologist review - not a diagnosis"
NEVER_POSITIVE = 1.01  # a threshold above any probability: the model cannot call that finding (no reliable threshold)


def _organs_of(f) -> list[str]:
    organs = list(getattr(f, "organs", None) or [])
    return organs or [f.organ]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _mean_logit(unit_embeddings: np.ndarray, prompts: np.ndarray, logit_scale: float) -> np.ndarray:
    """``L`` = mean over the prompt rows [P,E] of scale x cosine, for unit embeddings [N,E] -> [N]."""
    return float(logit_scale) * (unit_embeddings @ np.asarray(prompts, np.float32).T).mean(axis=1)


def prompt_logit_diff(embeddings: np.ndarray, pos: np.ndarray, neg: np.ndarray, logit_scale: float) -> np.ndarray:
    """``L+ - L-`` for embeddings [N,E] (rows may be NaN = missing) against prompt rows pos [P,E], neg [Q,E] -> [N]."""
    e = _unit(embeddings)
    return _mean_logit(e, pos, logit_scale) - _mean_logit(e, neg, logit_scale)


# How a finding's prompts become its score (per finding, chosen by the trainer, stored in the bundle next to the
# threshold it was calibrated with):
# - "pair": sigmoid(mean positive-prompt logit - mean negative-prompt logit), the CLIP 2-way softmax.
# - "positive": sigmoid(mean positive-prompt logit) - the negative prompts are not used. Why: for findings the model
#   was never trained against ("zero-shot"), the frozen sentence encoder puts "no pleural effusion" next to "pleural
#   effusion", so the negated prompts pull the score the wrong way (session 9: held-out findings 0.789 -> 0.865 macro
#   AUROC on the enriched set with the positive prompts alone; the prompt-supervised ones need the pair, 0.837 vs
#   0.625). Only its rank and its validation threshold carry meaning, like every score here.
# - "organ" (``<organ>_abnormal`` findings, session 17): the ORGAN'S EVIDENCE, the strongest reason any of its findings
#   gives to call it - see ``organ_margins``. Its own prompt pair is one of those reasons, at its own calibrated
#   ``prompt_threshold``; the finding's ``threshold`` is 0.5, so it is called exactly when some finding of the organ
#   is called, which is what the organ-wise F1 has measured since session 8. Why: the generic "abnormal lungs"
#   prompt alone ranked the lungs' abnormal studies BELOW chance (AUROC 0.33 on the 320-study realistic test, the
#   aorta 0.49, the liver 0.49) while atelectasis, steatosis, ... were ranked well: the draft showed a score that
#   contradicted its own specific findings.
SCORE_RULES = ("pair", "positive", "organ")
ORGAN_EVIDENCE_THRESHOLD = 0.5  # the "organ" score is sigmoid(margin): called at margin 0


def finding_logit(embeddings: np.ndarray, pos: np.ndarray, neg: np.ndarray, logit_scale: float,
                  rule: str = "pair") -> np.ndarray:
    """The logit a finding's PROMPT score is the sigmoid of, under ``rule`` (see ``SCORE_RULES``; an "organ" finding's
    prompts are scored as a pair, and ``score_matrix`` turns them into the organ's evidence)."""
    if rule in ("pair", "organ"):
        return prompt_logit_diff(embeddings, pos, neg, logit_scale)
    if rule == "positive":
        return _mean_logit(_unit(embeddings), pos, logit_scale)
    raise ValueError(f"unknown finding score rule {rule!r} (known: {', '.join(SCORE_RULES)})")


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def prompt_view(f):
    """The finding as scored by its own prompts: an "organ" finding becomes a "pair" finding at its
    ``prompt_threshold`` (``NEVER_POSITIVE`` when it has none: not yet calibrated, or its prompts cannot be trusted)."""
    if getattr(f, "score", "pair") != "organ":
        return f
    pt = getattr(f, "prompt_threshold", None)
    return replace(f, score="pair", threshold=NEVER_POSITIVE if pt is None else float(pt))


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


NEVER_CALLED = -1e6  # margin of an organ none of whose findings can fire (finite, so it still ranks)


def organ_margins(organ_embeddings: Mapping[str, np.ndarray], findings: Sequence, prompt_embeddings: np.ndarray,
                  logit_scale: float) -> dict[str, np.ndarray]:
    """{organ: [N] margin}: for each organ with embeddings, the largest ``logit(score) - logit(threshold)`` over the
    findings scored in that organ (each from THIS organ's crop only, "organ" findings by their own prompts at their
    ``prompt_threshold``) that can be called at all (threshold below ``NEVER_POSITIVE``); ``NEVER_CALLED`` when none
    can; NaN where the organ was not encoded. Margin >= 0 <=> at least one of the organ's findings is called: this is
    the draft's organ-level decision, the organ-wise F1's ``called`` rule and the "organ" score rule's evidence."""
    out = {}
    for organ, emb in organ_embeddings.items():
        mine = [prompt_view(f) for f in findings if organ in _organs_of(f)]
        if not mine:
            continue
        s = score_matrix({organ: emb}, mine, prompt_embeddings, logit_scale)
        encoded = np.isfinite(s).any(axis=1)
        thr = np.array([float(f.threshold) for f in mine], np.float64)
        can_fire = thr < NEVER_POSITIVE
        margin = np.full(len(s), NEVER_CALLED)
        if can_fire.any():
            m = _logit(s[:, can_fire]) - _logit(thr[can_fire])
            best = np.nanmax(np.where(np.isfinite(m), m, -np.inf), axis=1)
            margin = np.where(np.isfinite(best), best, NEVER_CALLED)
        out[organ] = np.where(encoded, margin, np.nan)
    return out


def score_matrix(organ_embeddings: Mapping[str, np.ndarray], findings: Sequence, prompt_embeddings: np.ndarray,
                 logit_scale: float) -> np.ndarray:
    """Batched scores: ``organ_embeddings[organ]`` is [N,E] for N studies (a row of NaN = organ not available in
    that study). Returns [N, F] float64 probabilities, NaN where none of a finding's organs is available.
    "organ" findings get ``sigmoid(organ_margins)`` of their organ, over the findings of THIS list (with their
    thresholds), so the list must hold the organ's other findings too (the bundle's full list does)."""
    P = np.asarray(prompt_embeddings, dtype=np.float32)
    n = None
    for v in organ_embeddings.values():
        n = np.asarray(v).shape[0]
        break
    if n is None:
        return np.full((0, len(findings)), np.nan)
    out = np.full((n, len(findings)), np.nan)
    margins = None
    for j, f in enumerate(findings):
        rule = getattr(f, "score", "pair")
        if rule == "organ":
            if margins is None:
                margins = organ_margins(organ_embeddings, findings, P, logit_scale)
            m = margins.get(f.organ)
            if m is not None:
                have = np.isfinite(m)
                out[have, j] = sigmoid(m[have])
            continue
        pos, neg = P[list(f.pos_index)], P[list(f.neg_index)]
        if len(pos) == 0 or (len(neg) == 0 and rule == "pair"):
            raise ValueError(f"finding {f.name}: needs at least one positive and one negative prompt")
        best = np.full(n, -np.inf)
        for organ in _organs_of(f):
            emb = organ_embeddings.get(organ)
            if emb is None:
                continue
            emb = np.asarray(emb, dtype=np.float32).reshape(n, -1)
            ok = np.isfinite(emb).all(axis=1)
            if not ok.any():
                continue
            d = np.full(n, -np.inf)
            d[ok] = finding_logit(emb[ok], pos, neg, logit_scale, rule)
            best = np.maximum(best, d)
        have = np.isfinite(best)
        out[have, j] = sigmoid(best[have])
    return out


def finding_scores(organ_embeddings: Mapping[str, np.ndarray], findings: Iterable, prompt_embeddings: np.ndarray,
                   logit_scale: float) -> dict[str, float]:
    """One study: ``organ_embeddings`` {organ: [E]} (organs that were encoded) -> {finding name: probability}.
    Findings none of whose organs is in ``organ_embeddings`` are left out (not assessable)."""
    findings = list(findings)
    batched = {k: np.asarray(v, dtype=np.float32).reshape(1, -1) for k, v in organ_embeddings.items()
               if v is not None}
    if not batched:
        return {}
    s = score_matrix(batched, findings, prompt_embeddings, logit_scale)[0]
    return {f.name: float(v) for f, v in zip(findings, s) if np.isfinite(v)}


def never_called(threshold: float | None) -> bool:
    """True for a finding this bundle never calls positive (threshold ``NEVER_POSITIVE``, set at calibration when the
    validation scores gave no reliable threshold): the draft must say it was not screened, not imply it is absent."""
    return threshold is not None and float(threshold) > 1.0


def decide(score: float, threshold: float) -> bool:
    """Positive call: ``score >= threshold`` (threshold from the validation split, shipped in the bundle)."""
    return bool(np.isfinite(score) and score >= float(threshold))


def decisions(scores: Mapping[str, float], findings: Iterable) -> dict[str, dict]:
    """{finding: {"score", "threshold", "positive", "organ"}} for the scored findings, with each finding's threshold."""
    out = {}
    for f in findings:
        if f.name in scores:
            s = float(scores[f.name])
            out[f.name] = {"score": s, "threshold": float(f.threshold), "positive": decide(s, f.threshold),
                           "organ": f.organ}
    return out


def text_query_scores(organ_embeddings: Mapping[str, np.ndarray], query_embedding: np.ndarray,
                      logit_scale: float) -> dict[str, float]:
    """Free-text query: scaled cosine of one query embedding with each organ embedding (for ranking organs)."""
    q = _unit(np.asarray(query_embedding).reshape(-1))
    return {k: float(logit_scale) * float(_unit(np.asarray(v).reshape(-1)) @ q) for k, v in organ_embeddings.items()}
