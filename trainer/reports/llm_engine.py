"""Report-sentence labelling with the local LLM (appliance.llm), constrained by a JSON schema built from the ontology.

Two ways to ask, both measured by trainer.reports.evaluate:
- mode "sentence": one generation per sentence. The few-shot prefix is the same for every call, so llama.cpp reuses
  its KV cache and only the new sentence is processed.
- mode "report": one generation per report, the schema demanding exactly one label per numbered sentence.
The grammar guarantees parseable JSON with valid enum values; "none" in the schema stands for null (a 135M model
follows a flat string enum more reliably than a union with null).
"""

from __future__ import annotations

import json

from appliance.ontology import ORGAN_NAMES
from trainer.reports.labels import FINDING_NAMES, PHASES, POLARITIES, Sentence, SentenceLabel

NONE = "none"

SENTENCE_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "organ": {"type": "string", "enum": [*ORGAN_NAMES, NONE]},
        "polarity": {"type": "string", "enum": list(POLARITIES)},
        "finding": {"type": "string", "enum": [*FINDING_NAMES, NONE]},
        "phase": {"type": "string", "enum": [*PHASES, NONE]},
    },
    "required": ["organ", "polarity", "finding", "phase"],
    "additionalProperties": False,
}


def report_schema(n_sentences: int) -> dict:
    return {
        "type": "object",
        "properties": {"labels": {"type": "array", "items": SENTENCE_SCHEMA,
                                  "minItems": n_sentences, "maxItems": n_sentences}},
        "required": ["labels"],
        "additionalProperties": False,
    }


SYSTEM_PROMPT = (
    "You label sentences of CT radiology reports. Answer with JSON only.\n"
    f"organ: one of {', '.join(ORGAN_NAMES)}, or none.\n"
    f"finding: one of {', '.join(FINDING_NAMES)}, or none.\n"
    "polarity: positive (finding present, also when hedged: likely, possible), negated (finding stated absent: "
    "no, without, resolved), normal (organ or measure stated normal), not_a_finding (technique, comparison, history, "
    "recommendation).\n"
    "phase: non_contrast, arterial, portal_venous, or none when the sentence does not state a contrast phase."
)

# (section, sentence, label) few-shot examples; kept out of every evaluation set.
FEW_SHOT: tuple[tuple[str, str, dict], ...] = (
    ("findings", "The spleen is enlarged, measuring 16 cm.",
     {"organ": "spleen", "polarity": "positive", "finding": "splenomegaly", "phase": NONE}),
    ("findings", "No hydronephrosis.",
     {"organ": "kidneys", "polarity": "negated", "finding": "hydronephrosis", "phase": NONE}),
    ("findings", "The pancreas is unremarkable.",
     {"organ": "pancreas", "polarity": "normal", "finding": NONE, "phase": NONE}),
    ("technique", "Axial images of the abdomen were obtained in the portal venous phase.",
     {"organ": NONE, "polarity": "not_a_finding", "finding": NONE, "phase": "portal_venous"}),
    ("impression", "Small left pleural effusion, likely reactive.",
     {"organ": "lungs", "polarity": "positive", "finding": "pleural_effusion", "phase": NONE}),
)


def _user_text(section: str, text: str) -> str:
    return f"Section: {section}\nSentence: {text}"


def sentence_messages(section: str, text: str) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for sec, sent, lab in FEW_SHOT:
        msgs.append({"role": "user", "content": _user_text(sec, sent)})
        msgs.append({"role": "assistant", "content": json.dumps(lab)})
    msgs.append({"role": "user", "content": _user_text(section, text)})
    return msgs


def report_messages(sentences: list[Sentence]) -> list[dict]:
    ex_in = "\n".join(f"{i + 1}. [{sec}] {sent}" for i, (sec, sent, _) in enumerate(FEW_SHOT))
    ex_out = json.dumps({"labels": [lab for _, _, lab in FEW_SHOT]})
    body = "\n".join(f"{i + 1}. [{s.section}] {s.text}" for i, s in enumerate(sentences))
    return [
        {"role": "system", "content": SYSTEM_PROMPT + "\nLabel every numbered sentence, in order."},
        {"role": "user", "content": ex_in},
        {"role": "assistant", "content": ex_out},
        {"role": "user", "content": body},
    ]


def _to_label(d: dict) -> SentenceLabel:
    def opt(v):
        return None if v == NONE else v

    organ = opt(d["organ"])
    return SentenceLabel(organ, d["polarity"], opt(d["finding"]), opt(d["phase"]),
                         organs=(organ,) if organ else ())


class LLMSentenceLabeller:
    """Labels sentences with a loaded appliance.llm.LocalLLM."""

    TOKENS_PER_LABEL = 48  # measured JSON length of one label is ~30 tokens; the rest is grammar whitespace slack

    def __init__(self, llm, mode: str = "sentence"):
        if mode not in ("sentence", "report"):
            raise ValueError(f"mode must be 'sentence' or 'report', got {mode!r}")
        self.llm = llm
        self.mode = mode

    @property
    def name(self) -> str:
        return f"llm:{self.llm.model_name}:{self.mode}"

    def label_sentences(self, sentences: list[Sentence]) -> list[SentenceLabel]:
        if not sentences:
            return []
        if self.mode == "sentence":
            return [
                _to_label(self.llm.generate_json(sentence_messages(s.section, s.text), SENTENCE_SCHEMA,
                                                 max_tokens=self.TOKENS_PER_LABEL * 2))
                for s in sentences
            ]
        out = self.llm.generate_json(report_messages(sentences), report_schema(len(sentences)),
                                     max_tokens=self.TOKENS_PER_LABEL * len(sentences) + 32)
        return [_to_label(d) for d in out["labels"]]
