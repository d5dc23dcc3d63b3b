"""Report drafting: a local quantized LLM writes a structured draft from the scorer's output, a guard checks it, and a
deterministic template is used whenever the LLM is absent, fails, or asserts something the scorer did not find.

Flow: ``draft_report(findings, organs, llm=...)``
1. The prompt lists the POSITIVE findings (organ, finding, score vs threshold, organ measurements) and the organs with
   nothing above threshold. A JSON-schema grammar (appliance.llm) forces the output into
   ``{"findings": [{"organ", "finding", "statement"}], "impression"}`` with organ/finding names from the ontology.
2. HALLUCINATION GUARD (``check_draft``): rejected when
   - a structured item names a finding the scorer did not report positive, or an organ that was not analysed, or
   - the free text (statements + impression) mentions any ontology finding term (finding name, display name, positive
     prompts, synonyms) in a non-negated clause while no finding owning that term was scored positive
     ("no gallstones" is fine; "gallstones are seen" when gallstones were not positive is rejected).
   Matching is longest-term-first so "hypodense liver lesion" is one mention, not also "liver lesion".
3. Rejected / LLM unavailable / LLM error / no positive finding -> ``template_draft`` (deterministic, built only from
   scorer output; with nothing positive the LLM is not asked at all).
4. Rendered text always starts AND ends with DISCLAIMER and always appends the scorer's positive-findings list
   (so an LLM that omits a positive finding cannot hide it); ``model_ids`` record which LLM (or template) wrote it
   and why a draft was rejected.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from appliance import ontology
from appliance.scoring import never_called
from appliance.store.results import FindingResult, OrganResult, ReportDraft

log = logging.getLogger(__name__)

DISCLAIMER = "AI DRAFT for radiologist review - not a diagnosis"
TEMPLATE_ID = "template-v1"
NOTHING_POSITIVE = "no finding scored above its threshold, so there is nothing for the LLM to describe"
_NEGATIONS = ("no ", "not ", "without ", "negative for ", "absent ", "absence of ", "free of ", "no evidence of ",
              "rather than ", "nor ")
_CLAUSE_SPLIT = re.compile(r"[.;:!?\n]|,|\bbut\b|\bhowever\b", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------ structure


def draft_schema(organ_names: list[str] | None = None, positive: set[tuple[str, str]] | None = None) -> dict:
    """JSON schema of the LLM draft.

    With ``positive`` (organ, finding) pairs the grammar only offers the positive organs and findings as names (the
    first line of defence; ``check_draft`` is the second: it checks organ/finding pairs and the free text, which no
    grammar can police). Deliberately small: llama.cpp's grammar sampling slows down steeply with alternatives
    (an anyOf per organ made a 7-organ draft take minutes on 2 busy cores), so normal organs are one sentence."""
    statement = {"type": "string"}  # no maxLength: llama.cpp expands it into a huge grammar (very slow sampling);
    # max_tokens bounds the length and the guard rejects looping text
    if positive is None:
        organs = organ_names or list(ontology.ORGAN_NAMES)
        names = [f.name for f in ontology.FINDINGS]
    else:
        organs = sorted({o for o, _ in positive})
        names = sorted({f for _, f in positive})
    props: dict = {"normal_organs": {"type": "string"}, "impression": {"type": "string"}}
    required = ["normal_organs", "impression"]
    if names:
        props = {"findings": {"type": "array", "minItems": 1, "maxItems": max(1, len(positive or names)),
                              "items": {"type": "object", "additionalProperties": False,
                                        "required": ["organ", "finding", "statement"],
                                        "properties": {"organ": {"enum": organs}, "finding": {"enum": names},
                                                       "statement": statement}}},
                 **props}
        required = ["findings", *required]
    return {"type": "object", "additionalProperties": False, "required": required, "properties": props}


@dataclass
class GuardResult:
    ok: bool
    violations: list[str]


def _fmt_measure(o: OrganResult) -> str:
    parts = []
    if o.volume_ml is not None:
        parts.append(f"{o.volume_ml:.0f} mL")
    if o.mean_hu is not None:
        parts.append(f"mean {o.mean_hu:.0f} HU")
    return ", ".join(parts)


def _display(name: str) -> str:
    f = ontology.FINDINGS_BY_NAME.get(name)
    return f.display if f else name.replace("_", " ")


def _organ_display(name: str) -> str:
    o = ontology.ORGANS_BY_NAME.get(name)
    return o.display if o else name.replace("_", " ")


# ------------------------------------------------------------------------------------------------ the guard


def _term_owners() -> list[tuple[str, set[str]]]:
    """(lower-case term, finding names that own it), longest term first."""
    owners: dict[str, set[str]] = {}
    for f in ontology.FINDINGS:
        terms = {f.name.replace("_", " "), f.display.lower(), *map(str.lower, f.positive_prompts),
                 *map(str.lower, f.synonyms)}
        if f.any_abnormality:
            terms.discard(f.display.lower())  # "Liver: any abnormality" is a heading, not prose
        for t in terms:
            t = re.sub(r"\s+", " ", t.strip())
            if len(t) >= 4:
                owners.setdefault(t, set()).add(f.name)
    return sorted(owners.items(), key=lambda kv: -len(kv[0]))


_TERMS = _term_owners()


def positive_mentions(text: str) -> list[tuple[str, set[str]]]:
    """Non-negated mentions of ontology finding terms in free text: [(term, owning findings)]."""
    out = []
    for clause in _CLAUSE_SPLIT.split(text.lower()):
        clause = " " + re.sub(r"[^a-z0-9 ]+", " ", clause) + " "
        clause = re.sub(r"\s+", " ", clause)
        for term, owners in _TERMS:
            pat = f" {term} "
            idx = clause.find(pat)
            while idx >= 0:
                before = clause[:idx + 1]
                negated = any(neg in before for neg in _NEGATIONS) or before.rstrip().endswith(" no")
                if not negated:
                    out.append((term, owners))
                # blank the match so a shorter term inside it is not counted again
                clause = clause[:idx + 1] + "#" * len(term) + clause[idx + 1 + len(term):]
                idx = clause.find(pat)
    return out


def _degenerate(text: str) -> str | None:
    words = re.findall(r"[a-z_]+", text.lower())
    for w in set(words):
        if len(w) > 3 and words.count(w) > 4:
            return f"degenerate output: {w!r} repeated {words.count(w)} times"
    return None


_NUM = re.compile(r"\d+(?:\.\d+)?")


def check_draft(structured: dict, positive: set[tuple[str, str]], analysed_organs: set[str], *,
                source_text: str | None = None) -> GuardResult:
    """Reject a draft that asserts a finding the scorer did not report positive (see module docstring).

    ``positive``: (organ, finding) pairs the scorer reported positive. Also rejected: an item repeated, an organ not
    analysed, and degenerate (looping) text - a tiny model's failure mode that must not reach a radiologist."""
    v: list[str] = []
    pos_names = {f for _, f in positive}
    texts = [str(structured.get("impression", "")), str(structured.get("normal_organs", ""))]
    seen = set()
    for i, item in enumerate(structured.get("findings", [])):
        name, organ = item.get("finding"), item.get("organ")
        if name and name != "none" and (organ, name) not in positive:
            where = "" if name not in pos_names else f" in the {organ}"
            v.append(f"findings[{i}] asserts {name!r}{where}, which the scorer did not report positive")
        if organ and organ not in analysed_organs:
            v.append(f"findings[{i}] describes organ {organ!r}, which was not analysed in this study")
        if (organ, name) in seen:
            v.append(f"findings[{i}] repeats {organ}/{name}")
        seen.add((organ, name))
        texts.append(str(item.get("statement", "")))
    if source_text is not None:  # numbers (sizes, volumes, counts) must come from the input, not be invented
        allowed = set(_NUM.findall(source_text))
        for t in texts:
            for n in _NUM.findall(t):
                if n not in allowed:
                    v.append(f"free text states the number {n}, which is not in the scorer/measurement input")
    known = set(ontology.ORGAN_NAMES) | set(ontology.FINDINGS_BY_NAME)
    for t in texts:
        for w in sorted(set(re.findall(r"[a-z]+(?:_[a-z]+)+", t.lower())) - known):
            v.append(f"free text uses the unknown term {w!r} (invented name)")
    for t in texts:
        bad = _degenerate(t)
        if bad:
            v.append(bad)
    for t in texts:
        for term, owners in positive_mentions(t):
            if not owners & pos_names:
                v.append(f"free text asserts {term!r} ({'/'.join(sorted(owners))}) but the scorer did not report it "
                         f"positive")
    v += _contradictions(structured, positive)
    return GuardResult(not v, v)


_CALLS_NORMAL = re.compile(r"\b(normal|unremarkable|no (acute )?abnormalit)")


def _contradictions(structured: dict, positive: set[tuple[str, str]]) -> list[str]:
    """The other way round: a draft that calls normal what the scorer reported positive (seen with SmolLM2-135M:
    "Other organs: Spine: any abnormality" under normal organs and "Impression: Normal organs" beside an osteopenia
    score above threshold). A radiologist must not get a draft that contradicts its own scored list."""
    v = []
    normal_text = str(structured.get("normal_organs", "")).lower()
    for organ in sorted({o for o, _ in positive}):
        display = ontology.organ(organ).display.lower()
        if re.search(rf"\b{re.escape(display)}\b", normal_text) or organ in normal_text:
            v.append(f"normal_organs names the {display}, which has a finding scored positive")
    impression = str(structured.get("impression", "")).lower()
    pos_names = {f for _, f in positive}
    if positive and _CALLS_NORMAL.search(impression) and \
            not any(owners & pos_names for _, owners in positive_mentions(impression)):
        v.append("the impression calls the study normal and names none of the findings scored positive")
    return v


# ------------------------------------------------------------------------------------------------ drafts


def _is_any_abnormality(name: str) -> bool:
    f = ontology.FINDINGS_BY_NAME.get(name)
    return bool(f and f.any_abnormality)


def _positives(findings: list[FindingResult]) -> list[FindingResult]:
    """The findings the draft describes. ``<organ>_abnormal`` is left out where a specific finding of the same organ
    is positive: it is then called because of that finding (score rule "organ", appliance.scoring) and would only
    repeat it as "any abnormality"."""
    pos = [f for f in findings if f.positive]
    specific = {f.organ for f in pos if not _is_any_abnormality(f.finding)}
    return sorted((f for f in pos if not (_is_any_abnormality(f.finding) and f.organ in specific)),
                  key=lambda f: (f.organ, -f.score))


def _scored_block(findings: list[FindingResult]) -> list[str]:
    pos = _positives(findings)
    if not pos:
        return ["AI-scored findings above threshold: none."]
    lines = ["AI-scored findings above threshold:"]
    for f in pos:
        thr = "" if f.threshold is None else f" (threshold {f.threshold:.2f})"
        lines.append(f"- {_organ_display(f.organ)}: {_display(f.finding)} - score {f.score:.2f}{thr}")
    return lines


def template_structured(findings: list[FindingResult], organs: list[OrganResult]) -> dict:
    pos = _positives(findings)
    by_organ: dict[str, list[FindingResult]] = {}
    for f in pos:
        by_organ.setdefault(f.organ, []).append(f)
    items = []
    for o in organs:
        if o.status not in ("ok", "partial_in_crop", "truncated_by_scan"):
            continue
        m = _fmt_measure(o)
        m = f" ({m})" if m else ""
        fs = by_organ.get(o.organ, [])
        if fs:
            for f in fs:
                items.append({"organ": o.organ, "finding": f.finding,
                              "statement": f"{_display(f.finding)} suggested (AI score {f.score:.2f}){m}."})
        else:
            items.append({"organ": o.organ, "finding": "none",
                          "statement": f"No abnormality scored above threshold{m}."})
    if pos:
        impression = "; ".join(f"{_display(f.finding)} ({_organ_display(f.organ).lower()})" for f in pos) + "."
    else:
        impression = "No finding scored above its threshold in the analysed organs."
    return {"findings": items, "impression": impression}


def render(structured: dict, findings: list[FindingResult], organs: list[OrganResult], *, source: str) -> str:
    lines = [DISCLAIMER, "", "Findings:"]
    for item in structured.get("findings", []):
        lines.append(f"- {_organ_display(item['organ'])}: {item['statement'].strip()}")
    if structured.get("normal_organs", "").strip():
        lines.append(f"- Other organs: {structured['normal_organs'].strip()}")
    not_assessed = [f"{_organ_display(o.organ)} ({o.status})" for o in organs
                    if o.status not in ("ok", "partial_in_crop", "truncated_by_scan")]
    if not_assessed:
        lines.append("Not assessed: " + ", ".join(not_assessed) + ".")
    unscreened = sorted({_display(f.finding).lower() for f in findings if never_called(f.threshold)})
    if unscreened:  # "no abnormality" above must not read as "checked for these"
        lines.append("Not screened by this AI model (no reliable threshold on its validation studies): "
                     + ", ".join(unscreened) + ".")
    lines += ["", "Impression:", structured.get("impression", "").strip() or "-", ""]
    lines += _scored_block(findings)
    lines += ["", f"Draft written by: {source}.", DISCLAIMER]
    return "\n".join(lines)


def template_draft(findings: list[FindingResult], organs: list[OrganResult], *, reason: str = "template requested",
                   extra_ids: dict | None = None) -> ReportDraft:
    s = template_structured(findings, organs)
    ids = {"draft_source": "template", "template": TEMPLATE_ID, "llm": None, "fallback_reason": reason,
           **(extra_ids or {})}
    return ReportDraft(render(s, findings, organs, source=f"deterministic template ({reason})"), s, ids)


def build_messages(findings: list[FindingResult], organs: list[OrganResult]) -> list[dict]:
    pos = _positives(findings)
    meas = {o.organ: _fmt_measure(o) for o in organs}
    pos_lines = [f"- organ={f.organ}; finding={f.finding} ({_display(f.finding)}); score={f.score:.2f}"
                 f"{'' if f.threshold is None else f' vs threshold {f.threshold:.2f}'}; {meas.get(f.organ, '')}"
                 for f in pos] or ["- none"]
    pos_organs = {f.organ for f in pos}
    normal = [f"{o.organ} ({meas[o.organ]})" for o in organs
              if o.status in ("ok", "partial_in_crop", "truncated_by_scan") and o.organ not in pos_organs]
    system = ("You draft CT reports for a radiologist to review. Report ONLY the positive findings listed. "
              "Do not mention any other disease. Organs listed as normal are described as unremarkable. "
              "Answer in JSON.")
    user = ("Positive findings:\n" + "\n".join(pos_lines) + "\nNormal organs: " + (", ".join(normal) or "none") +
            "\nWrite one short item per positive finding (organ and finding name as given), one sentence on the "
            "normal organs, and a one-sentence impression.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _dedupe(structured: dict) -> dict:
    seen, items = set(), []
    for item in structured.get("findings", []):
        key = (item.get("organ"), item.get("finding"))
        if key not in seen:
            seen.add(key)
            items.append(item)
    return {**structured, "findings": items}


def draft_report(findings: list[FindingResult], organs: list[OrganResult], *, llm: Any = None,
                 llm_error: str | None = None, max_tokens: int = 320) -> ReportDraft:
    """LLM draft checked by the guard, else the template (see module docstring). ``llm``: a LocalLLM or None."""
    if llm is None:
        return template_draft(findings, organs, reason=llm_error or "no local LLM configured")
    analysed = [o.organ for o in organs if o.status in ("ok", "partial_in_crop", "truncated_by_scan")]
    name = getattr(llm, "model_name", type(llm).__name__)
    ids = {"llm": name}
    positive = {(f.organ, f.finding) for f in findings if f.positive}
    if not positive:
        # Nothing to describe: the template's "no finding scored above its threshold" is the whole draft, and a
        # model can only add risk. Measured with the embedded SmolLM2-135M on a no-finding study: 320 tokens of
        # organ trivia or a looping organ list, then max_tokens and the template anyway, after ~40 s on 2 cores.
        return template_draft(findings, organs, reason=NOTHING_POSITIVE, extra_ids=ids)
    messages = build_messages(findings, organs)
    try:
        structured = llm.generate_json(messages, draft_schema(analysed or None, positive),
                                       max_tokens=max_tokens)
    except Exception as exc:  # LLMOutputError, llama.cpp errors: a draft must still be produced
        log.warning("LLM draft failed (%s); using the template", type(exc).__name__)
        return template_draft(findings, organs, reason=f"LLM {name} failed: {type(exc).__name__}: {exc}",
                              extra_ids=ids)
    structured = _dedupe(structured)  # a repeated item is noise, not a hallucination: keep the first
    guard = check_draft(structured, positive, set(analysed), source_text=messages[1]["content"])
    if not guard.ok:
        log.warning("LLM draft rejected by the hallucination guard: %s", "; ".join(guard.violations))
        return template_draft(findings, organs, reason=f"LLM {name} draft rejected by the hallucination guard",
                              extra_ids={**ids, "rejected": guard.violations, "rejected_output": structured})
    stats = getattr(llm, "last_stats", None)
    ids.update({"draft_source": "llm", "template": None, "guard": "passed"})
    if stats is not None:
        ids["tokens_per_s"] = round(stats.tokens_per_s, 1)
    return ReportDraft(render(structured, findings, organs, source=f"local LLM {name}"), structured, ids)
