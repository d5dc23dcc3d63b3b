"""Typed results of report parsing: one label per single-finding sentence, and the report around them.

The vocabularies (organs, findings) come from appliance.ontology so the labels match what the models score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from appliance.ontology import CATEGORY_FINDINGS, ORGAN_NAMES

POLARITIES: tuple[str, ...] = ("positive", "negated", "normal", "not_a_finding")
PHASES: tuple[str, ...] = ("non_contrast", "arterial", "portal_venous")
FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in CATEGORY_FINDINGS)
# Sections a report is cut into; text before any heading is "body". Sentences in NON_FINDING_SECTIONS describe the
# exam or the question, not the patient, so they are never findings (a clinical question "rule out stones" is not
# a stone).
SECTIONS: tuple[str, ...] = ("indication", "technique", "comparison", "findings", "impression", "body")
NON_FINDING_SECTIONS: frozenset[str] = frozenset({"indication", "technique", "comparison"})


@dataclass(frozen=True)
class Sentence:
    """One unit of a report that carries (at most) one finding statement."""

    text: str
    section: str  # one of SECTIONS
    start: int  # character offsets into the original report text (text == report[start:end], whitespace collapsed)
    end: int
    # the sub-heading of the line the sentence is on ("LIVER" in "LIVER: Normal size. No focal lesion."): in
    # structured reports it names the organ that the later sentences of the line no longer repeat
    heading: str = ""


@dataclass(frozen=True)
class SentenceLabel:
    organ: str | None  # one of ORGAN_NAMES
    polarity: str  # one of POLARITIES
    finding: str | None  # one of FINDING_NAMES
    phase: str | None  # one of PHASES, only where the sentence states it
    hedged: bool = False  # "likely", "cannot exclude", ...: labelled positive, flagged here
    organs: tuple[str, ...] = ()  # every organ the sentence names, first = ``organ``

    def __post_init__(self) -> None:
        # Why validate here: both engines (rules, LLM) produce these; a wrong name must fail loudly, not train a model.
        if self.organ is not None and self.organ not in ORGAN_NAMES:
            raise ValueError(f"unknown organ {self.organ!r}")
        if self.polarity not in POLARITIES:
            raise ValueError(f"unknown polarity {self.polarity!r}")
        if self.finding is not None and self.finding not in FINDING_NAMES:
            raise ValueError(f"unknown finding {self.finding!r}")
        if self.phase is not None and self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}")

    def key(self) -> tuple:
        """The fields that are evaluated and cross-checked."""
        return (self.organ, self.polarity, self.finding, self.phase)


@dataclass(frozen=True)
class ParsedSentence:
    sentence: Sentence
    label: SentenceLabel
    engine: str  # "rules" or "llm:<model file>"
    cross_check: SentenceLabel | None = None  # the rule engine's label when the LLM labelled the sentence

    @property
    def disagreements(self) -> tuple[str, ...]:
        """Names of the fields where the LLM and the rule engine disagree (empty without a cross-check)."""
        if self.cross_check is None:
            return ()
        names = ("organ", "polarity", "finding", "phase")
        return tuple(n for n, a, b in zip(names, self.label.key(), self.cross_check.key()) if a != b)


@dataclass
class ParsedReport:
    processable: bool
    reason: str  # why not processable, or "" when it was
    sentences: list[ParsedSentence] = field(default_factory=list)
    phase: str | None = None  # the report's contrast phase: the first phase stated anywhere (technique first)
    notes: list[str] = field(default_factory=list)  # things worth logging that did not stop processing
    engine: str = "rules"
    disagreement_counts: dict[str, int] = field(default_factory=dict)

    def findings(self) -> list[ParsedSentence]:
        return [s for s in self.sentences if s.label.polarity != "not_a_finding"]

    def to_dict(self) -> dict:
        return {
            "processable": self.processable,
            "reason": self.reason,
            "phase": self.phase,
            "notes": list(self.notes),
            "engine": self.engine,
            "disagreement_counts": dict(self.disagreement_counts),
            "sentences": [
                {
                    "text": s.sentence.text,
                    "section": s.sentence.section,
                    **{k: v for k, v in asdict(s.label).items() if k != "organs"},
                    "organs": list(s.label.organs),
                    "engine": s.engine,
                    **({"disagreements": list(s.disagreements)} if s.cross_check is not None else {}),
                }
                for s in self.sentences
            ],
        }
