"""Report drafting: the hallucination guard rejects an LLM draft that asserts an absent finding, the template is used
instead, and every draft carries the AI-draft disclaimer at both ends.

A scripted LLM object is used for the guard tests on purpose: the thing under test is the guard, and a crafted
output is the only way to make a model hallucinate on demand. One test runs the real bundled GGUF end to end."""

import pytest

from appliance.report_draft import (DISCLAIMER, check_draft, draft_report, positive_mentions, template_draft)
from appliance.store.results import FindingResult, OrganResult

ORGANS = [OrganResult("liver", "ok", 1500.0, 50.0, 12.0), OrganResult("gallbladder", "ok", 30.0, 10.0, 8.0),
          OrganResult("spleen", "ok", 200.0, 45.0, 9.0), OrganResult("kidneys", "absent")]
FINDINGS = [FindingResult("liver", "hepatic_steatosis", 0.91, 0.5, True),
            FindingResult("gallbladder", "gallstones", 0.12, 0.5, False),
            FindingResult("spleen", "splenomegaly", 0.30, 0.5, False)]


class ScriptedLLM:
    model_name = "scripted-test-llm"
    last_stats = None

    def __init__(self, output=None, exc=None):
        self.output, self.exc, self.calls = output, exc, []

    def generate_json(self, messages, schema, max_tokens=256, temperature=0.0):
        self.calls.append((messages, schema))
        if self.exc:
            raise self.exc
        return self.output


def _ends(text):
    assert text.startswith(DISCLAIMER) and text.rstrip().endswith(DISCLAIMER)


def test_honest_llm_draft_is_used():
    out = {"findings": [{"organ": "liver", "finding": "hepatic_steatosis", "statement": "Diffuse fatty infiltration."},
                        {"organ": "gallbladder", "finding": "none", "statement": "No gallstones."}],
           "impression": "Hepatic steatosis."}
    llm = ScriptedLLM(out)
    d = draft_report(FINDINGS, ORGANS, llm=llm)
    assert d.model_ids["draft_source"] == "llm" and d.model_ids["llm"] == "scripted-test-llm"
    assert d.structured == out
    _ends(d.draft_text)
    # the prompt gave the positive finding and the schema limits names to the ontology
    prompt = llm.calls[0][0][1]["content"]
    assert "hepatic_steatosis" in prompt and "gallstones" not in prompt.split("Normal organs")[0]


def test_structured_absent_finding_is_rejected_and_template_used():
    out = {"findings": [{"organ": "gallbladder", "finding": "gallstones", "statement": "Stones."}],
           "impression": "See above."}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template"
    assert any("gallstones" in v for v in d.model_ids["rejected"])
    assert "Gallstones" not in d.draft_text.split("AI-scored")[0]
    _ends(d.draft_text)


def test_free_text_absent_finding_is_rejected():
    # structured names are all honest; the hallucination hides in the prose
    out = {"findings": [{"organ": "liver", "finding": "hepatic_steatosis", "statement": "Fatty liver."},
                        {"organ": "spleen", "finding": "none", "statement": "The spleen is enlarged."}],
           "impression": "Steatosis and cholelithiasis."}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template"
    joined = " ".join(d.model_ids["rejected"])
    assert "cholelithiasis" in joined and "the spleen is enlarged" in joined


def test_negated_mentions_and_unanalysed_organs():
    assert positive_mentions("No gallstones. The liver shows no hepatic steatosis, without splenomegaly.") == []
    assert [t for t, _ in positive_mentions("Hypodense liver lesion.")] == ["hypodense liver lesion"]
    g = check_draft({"findings": [{"organ": "kidneys", "finding": "none", "statement": "Normal."}], "impression": ""},
                    {("liver", "hepatic_steatosis")}, {"liver"})
    assert not g.ok and "kidneys" in g.violations[0]


def test_positive_finding_on_the_wrong_organ_or_looping_text_is_rejected():
    out = {"findings": [{"organ": "gallbladder", "finding": "hepatic_steatosis", "statement": "Steatosis."}],
           "impression": "Hepatic steatosis."}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template" and "in the gallbladder" in d.model_ids["rejected"][0]
    out = {"findings": [], "impression": "Normal.", "normal_organs": "liver_deformitam."}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template" and "invented name" in d.model_ids["rejected"][0]
    out = {"findings": [], "impression": "liver, " * 8}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template" and "degenerate" in d.model_ids["rejected"][0]


def test_invented_numbers_are_rejected():
    out = {"findings": [{"organ": "liver", "finding": "hepatic_steatosis", "statement": "Liver volume 1500 mL."}],
           "impression": "Three positive findings: 3."}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template"
    assert d.model_ids["rejected"] == ["free text states the number 3, which is not in the scorer/measurement input"]


def test_llm_failure_or_absence_gives_template():
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(exc=ValueError("boom")))
    assert d.model_ids["draft_source"] == "template" and "boom" in d.model_ids["fallback_reason"]
    d = draft_report(FINDINGS, ORGANS, llm=None)
    assert d.model_ids == {**d.model_ids, "draft_source": "template", "llm": None}
    _ends(d.draft_text)
    assert "Hepatic steatosis" in d.draft_text and "Kidneys (absent)" in d.draft_text


def test_template_passes_its_own_guard_and_is_deterministic():
    a, b = template_draft(FINDINGS, ORGANS), template_draft(FINDINGS, ORGANS)
    assert a.draft_text == b.draft_text
    assert check_draft(a.structured, {("liver", "hepatic_steatosis")}, {"liver", "gallbladder", "spleen"}).ok


def test_no_positive_finding_is_drafted_without_asking_the_llm():
    llm = ScriptedLLM({"normal_organs": "The liver is a vital organ.", "impression": "Normal."})
    negatives = [FindingResult(f.organ, f.finding, 0.1, 0.5, False) for f in FINDINGS]
    d = draft_report(negatives, ORGANS, llm=llm)
    assert llm.calls == []
    assert d.model_ids["draft_source"] == "template" and d.model_ids["llm"] == "scripted-test-llm"
    assert "nothing for the LLM to describe" in d.model_ids["fallback_reason"]
    assert "No finding scored above its threshold" in d.draft_text and "vital organ" not in d.draft_text
    _ends(d.draft_text)


def test_grammar_keeps_the_schema_order():
    """The draft's properties come out in the schema's order (findings, normal organs, then the impression that sums
    them up), not sorted by name."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from appliance.llm import LocalLLM
    from appliance.report_draft import draft_schema
    llm = LocalLLM.__new__(LocalLLM)
    llm._grammar_cache, llm._llama_cpp = {}, llama_cpp
    grammar = llm._grammar(draft_schema(["liver"], {("liver", "hepatic_steatosis")}))
    root = next(line for line in str(grammar._grammar).splitlines() if line.startswith("root ::="))
    assert root.index("findings") < root.index("normal-organs") < root.index("impression")


def test_real_local_llm_draft_is_valid_or_falls_back():
    llm_mod = pytest.importorskip("llama_cpp")
    from appliance.llm import LLMUnavailable, load_llm
    try:
        llm = load_llm(n_ctx=2048, n_threads=1)
    except LLMUnavailable as exc:
        pytest.skip(str(exc))
    d = draft_report(FINDINGS, ORGANS, llm=llm, max_tokens=384)
    _ends(d.draft_text)
    assert d.model_ids["llm"] == llm.model_name
    if d.model_ids["draft_source"] == "llm":
        assert check_draft(d.structured, {("liver", "hepatic_steatosis")}, {"liver", "gallbladder", "spleen"}).ok
    del llm_mod


def test_a_draft_that_calls_normal_what_was_scored_positive_is_rejected():
    # the shape of a real SmolLM2-135M draft from the quick start: the positive organ listed as normal, and a
    # "normal" impression beside an above-threshold score
    out = {"findings": [{"organ": "liver", "finding": "hepatic_steatosis", "statement": "Steatosis."}],
           "normal_organs": "Liver: any abnormality, spleen", "impression": "Normal organs"}
    d = draft_report(FINDINGS, ORGANS, llm=ScriptedLLM(out))
    assert d.model_ids["draft_source"] == "template"
    assert d.model_ids["rejected"] == ["normal_organs names the liver, which has a finding scored positive",
                                       "the impression calls the study normal and names none of the findings "
                                       "scored positive"]
    # an impression that names the positive finding may call the rest normal
    ok = {"findings": [{"organ": "liver", "finding": "hepatic_steatosis", "statement": "Steatosis."}],
          "normal_organs": "gallbladder, spleen", "impression": "Hepatic steatosis; the other organs are normal."}
    assert check_draft(ok, {("liver", "hepatic_steatosis")}, {"liver", "gallbladder", "spleen"}).ok


def test_findings_the_model_never_calls_are_named_as_not_screened():
    """A finding whose bundle threshold no score reaches (no reliable threshold on validation) cannot be positive; the
    draft names it, so "no abnormality" in its organ is not read as "checked for it"."""
    from appliance.scoring import NEVER_POSITIVE
    findings = FINDINGS + [FindingResult("adrenal_glands", "adrenal_nodule", 0.97, NEVER_POSITIVE, False)]
    organs = ORGANS + [OrganResult("adrenal_glands", "ok", 8.0, 30.0, 2.0)]
    text = template_draft(findings, organs).draft_text
    line = [ln for ln in text.splitlines() if ln.startswith("Not screened by this AI model")]
    assert line == ["Not screened by this AI model (no reliable threshold on its validation studies): adrenal nodule."]
    assert "Adrenal glands: No abnormality scored above threshold" in text  # the organ itself was assessed
    assert "Not screened" not in template_draft(FINDINGS, ORGANS).draft_text  # every finding callable: no such line
    llm = ScriptedLLM({"findings": [{"organ": "liver", "finding": "hepatic_steatosis",
                                     "statement": "Hepatic steatosis suggested."}],
                       "normal_organs": "Gallbladder, spleen and adrenal glands unremarkable.",
                       "impression": "Hepatic steatosis."})
    d = draft_report(findings, organs, llm=llm)
    assert "Not screened by this AI model" in d.draft_text  # the LLM's draft carries it too


def test_organ_abnormal_is_not_repeated_next_to_the_finding_that_made_it():
    """``liver_abnormal`` (the organ's evidence) is positive whenever steatosis is; the draft names steatosis once
    and shows "any abnormality" only for an organ with no specific finding called."""
    findings = FINDINGS + [FindingResult("liver", "liver_abnormal", 0.93, 0.5, True),
                           FindingResult("aorta", "aorta_abnormal", 0.71, 0.5, True)]
    d = template_draft(findings, ORGANS + [OrganResult("aorta", "ok", 80.0, 40.0, 10.0)])
    got = {(i["organ"], i["finding"]) for i in d.structured["findings"] if i["finding"] != "none"}
    assert got == {("liver", "hepatic_steatosis"), ("aorta", "aorta_abnormal")}
