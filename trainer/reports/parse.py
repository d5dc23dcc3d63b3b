"""Parse one report end to end: checks (empty, not English, no FINDINGS section), split, label, cross-check.

Engine choice: the LLM labels the sentences when one is configured (an object passed in, a GGUF path passed in, or
$TOTALFM_LLM_GGUF set); otherwise the rule engine does. When the LLM labels, the rule engine labels too and every
field where they disagree is counted, so a weak or drifting model shows up in the numbers instead of in the labels.
Logs carry reasons and counts only, never report text (it can hold patient details).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from appliance.llm import ENV_GGUF, LLMOutputError, load_llm
from trainer.reports import rules
from trainer.reports.labels import NON_FINDING_SECTIONS, ParsedReport, ParsedSentence
from trainer.reports.language import looks_english
from trainer.reports.llm_engine import LLMSentenceLabeller
from trainer.reports.splitter import split_sentences

log = logging.getLogger(__name__)

ENGINES = ("auto", "rules", "llm")


def llm_configured() -> bool:
    return bool(os.environ.get(ENV_GGUF, "").strip())


def make_llm_labeller(gguf: str | None = None, *, mode: str = "sentence", n_ctx: int = 4096) -> LLMSentenceLabeller:
    """Load the configured (or given) GGUF model; raises appliance.llm.LLMUnavailable when it cannot run."""
    return LLMSentenceLabeller(load_llm(gguf, n_ctx=n_ctx), mode=mode)


def parse_report(text: str | None, *, engine: str = "auto", labeller: LLMSentenceLabeller | None = None,
                 gguf: str | None = None, ref: str = "-") -> ParsedReport:
    """Split and label one report. ``ref``: an opaque id for log lines (not an accession or patient id)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if text is None or not text.strip():
        reason = "empty report: no text to parse"
        log.info("report %s not processable: %s", ref, reason)
        return ParsedReport(False, reason, engine="none")
    ok, reason = looks_english(text)
    if not ok:
        log.info("report %s not processable: %s", ref, reason)
        return ParsedReport(False, reason, engine="none")

    sentences = split_sentences(text)
    notes: list[str] = []
    sections = {s.section for s in sentences}
    if "findings" not in sections:
        notes.append("no FINDINGS section: sentences outside TECHNIQUE/COMPARISON/INDICATION were parsed as findings"
                     if sections - NON_FINDING_SECTIONS else
                     "no FINDINGS section and no other text with findings: nothing to label")
    rule_labels = [rules.label_sentence(s) for s in sentences]

    use_llm = engine == "llm" or (engine == "auto" and (labeller is not None or gguf is not None or llm_configured()))
    if use_llm:
        labeller = labeller or make_llm_labeller(gguf)
        try:
            llm_labels = labeller.label_sentences(sentences)
        except LLMOutputError as exc:
            # one unusable generation must not lose the report: keep the rule labels and say why
            notes.append(f"LLM output unusable ({exc}); rule-engine labels used")
            llm_labels = rule_labels
        parsed = [ParsedSentence(s, lab, labeller.name, cross_check=rl)
                  for s, lab, rl in zip(sentences, llm_labels, rule_labels)]
        counts = Counter(field for p in parsed for field in p.disagreements)
        disagreements = {f: counts.get(f, 0) for f in ("organ", "polarity", "finding", "phase")}
        engine_name = labeller.name
    else:
        parsed = [ParsedSentence(s, lab, "rules") for s, lab in zip(sentences, rule_labels)]
        disagreements = {}
        engine_name = "rules"

    phase = next((p.label.phase for p in sorted(parsed, key=lambda p: p.sentence.section != "technique")
                  if p.label.phase), None)
    report = ParsedReport(True, "", parsed, phase=phase, notes=notes, engine=engine_name,
                          disagreement_counts=disagreements)
    n_find = len(report.findings())
    if not n_find:
        notes.append("no finding statements found")
    for note in notes:
        log.info("report %s: %s", ref, note)
    log.info("report %s parsed by %s: %d sentences, %d finding statements%s", ref, engine_name, len(parsed), n_find,
             f", LLM/rule disagreements {disagreements}" if disagreements else "")
    return report
