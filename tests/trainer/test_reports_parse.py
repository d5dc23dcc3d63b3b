"""parse_report end to end: edge cases with logged reasons, engine choice, LLM cross-check with the real model."""

import importlib.util
import logging

import pytest

from trainer.reports.parse import parse_report

REPORT = """TECHNIQUE: CT abdomen in the portal venous phase.
FINDINGS:
The liver is enlarged. No gallstones. The spleen is unremarkable.
IMPRESSION:
1. Hepatomegaly.
"""


def test_empty_report_is_not_processable_with_a_logged_reason(caplog):
    caplog.set_level(logging.INFO, logger="trainer.reports.parse")
    for text in ("", "   \n\t", None):
        rep = parse_report(text, engine="rules", ref="r1")
        assert not rep.processable and "empty" in rep.reason and rep.sentences == []
    assert "r1 not processable: empty report" in caplog.text


@pytest.mark.parametrize("text", [
    "BEFUND: Die Leber ist normal groß und homogen. Keine Gallensteine. Kein Aszites. Milz unauffällig.",
    "CONCLUSION : Le foie est de taille normale. Pas de lithiase vésiculaire. Absence d'épanchement pleural.",
    "Il fegato è nei limiti di norma. Non versamento pleurico. Milza di dimensioni normali.",
])
def test_non_english_report_is_marked_not_processable(text, caplog):
    caplog.set_level(logging.INFO, logger="trainer.reports.parse")
    rep = parse_report(text, engine="rules")
    assert not rep.processable and "English" in rep.reason
    assert "does not look like English" in caplog.text
    assert "Leber" not in caplog.text and "foie" not in caplog.text and "fegato" not in caplog.text  # no report text


def test_terse_english_report_is_processable():
    rep = parse_report("Hepatomegaly. Splenomegaly. Cholelithiasis. Nephrolithiasis.", engine="rules")
    assert rep.processable
    assert [s.label.finding for s in rep.sentences] == ["hepatomegaly", "splenomegaly", "gallstones", "kidney_stone"]


def test_report_without_findings_section_is_parsed_and_noted(caplog):
    caplog.set_level(logging.INFO, logger="trainer.reports.parse")
    rep = parse_report("COMPARISON: None.\nIMPRESSION: Small right pleural effusion. No ascites.", engine="rules")
    assert rep.processable
    assert any("no FINDINGS section" in n for n in rep.notes)
    assert "no FINDINGS section" in caplog.text
    assert [(s.label.polarity, s.label.finding) for s in rep.findings()] == [
        ("positive", "pleural_effusion"), ("negated", "ascites")]


def test_technique_only_report_has_no_findings_and_says_so():
    rep = parse_report("TECHNIQUE: Non-contrast CT of the abdomen and pelvis.", engine="rules")
    assert rep.processable and rep.findings() == [] and rep.phase == "non_contrast"
    assert any("nothing to label" in n for n in rep.notes)


def test_rules_engine_labels_and_report_phase(monkeypatch):
    monkeypatch.delenv("TOTALFM_LLM_GGUF", raising=False)
    rep = parse_report(REPORT)  # auto without a configured LLM -> rules
    assert rep.engine == "rules" and rep.phase == "portal_venous"
    assert [(s.sentence.section, s.label.organ, s.label.polarity, s.label.finding) for s in rep.sentences] == [
        ("technique", None, "not_a_finding", None),
        ("findings", "liver", "positive", "hepatomegaly"),
        ("findings", "gallbladder", "negated", "gallstones"),
        ("findings", "spleen", "normal", None),
        ("impression", "liver", "positive", "hepatomegaly"),
    ]
    d = rep.to_dict()
    assert d["sentences"][1]["finding"] == "hepatomegaly" and d["processable"]


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError):
        parse_report("No ascites.", engine="magic")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
def test_llm_engine_is_cross_checked_against_rules(monkeypatch):
    from trainer.reports.parse import make_llm_labeller

    monkeypatch.delenv("TOTALFM_LLM_GGUF", raising=False)
    labeller = make_llm_labeller(mode="sentence", n_ctx=2048)
    rep = parse_report(REPORT, labeller=labeller)
    assert rep.engine.startswith("llm:") and len(rep.sentences) == 5
    for s in rep.sentences:
        assert s.cross_check is not None  # the rules' label rides along
        assert set(s.disagreements) <= {"organ", "polarity", "finding", "phase"}
    expected = {f: sum(f in s.disagreements for s in rep.sentences) for f in ("organ", "polarity", "finding", "phase")}
    assert rep.disagreement_counts == expected


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
def test_unusable_llm_output_falls_back_to_rules_with_a_note():
    from appliance.llm import load_llm
    from trainer.reports.llm_engine import LLMSentenceLabeller

    tiny_context = LLMSentenceLabeller(load_llm(n_ctx=64), mode="report")  # the few-shot prompt cannot fit
    rep = parse_report(REPORT, labeller=tiny_context)
    assert rep.processable and any("LLM output unusable" in n for n in rep.notes)
    assert [s.label for s in rep.sentences] == [s.cross_check for s in rep.sentences]
    assert rep.disagreement_counts == {"organ": 0, "polarity": 0, "finding": 0, "phase": 0}
