"""Cut a free-text radiology report into sections and single-finding sentences.

What makes report text different from prose, and how each case is handled:
- Headings ("FINDINGS:", "Impression", "CLINICAL HISTORY: ...") open a section, with or without text on the same line.
- Numbered or bulleted lists ("1. ...", "2) ...", "- ...") put one finding per item; the marker is dropped.
- Full stops that do not end a sentence: abbreviations ("approx.", "e.g.", "vs."), decimals ("3.5 cm", no split as
  there is no space), unit abbreviations ("2 cm. lesion": a unit followed by a lower-case word does not end the
  sentence, "2 cm. The spleen ..." does).
- Semicolons separate statements ("No ascites; the spleen is normal.") and are cut there.
- Hard-wrapped lines: a line break ends a sentence only when the next line starts like a new statement (capital,
  digit, bullet) or the line ends in punctuation; otherwise the lines are one sentence.
"""

from __future__ import annotations

import re

from trainer.reports.labels import Sentence

# heading text (upper-case, no colon) -> section name
_HEADINGS: dict[str, str] = {}
for _section, _names in {
    "indication": ("CLINICAL INDICATION", "CLINICAL INDICATIONS", "INDICATION", "INDICATIONS", "CLINICAL HISTORY",
                   "HISTORY", "CLINICAL INFORMATION", "CLINICAL DETAILS", "REASON FOR EXAM",
                   "REASON FOR EXAMINATION", "REASON FOR STUDY", "CLINICAL QUESTION"),
    "technique": ("TECHNIQUE", "PROTOCOL", "PROCEDURE", "EXAMINATION", "EXAM", "STUDY", "CT TECHNIQUE"),
    "comparison": ("COMPARISON", "COMPARISONS", "PRIOR STUDIES", "PRIOR STUDY", "PRIORS"),
    "findings": ("FINDINGS", "FINDING", "REPORT", "FINDINGS AND IMPRESSION"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY", "OPINION", "ASSESSMENT"),
}.items():
    for _n in _names:
        _HEADINGS[_n] = _section

_HEADING_WORDS = "|".join(sorted((re.escape(h).replace(r"\ ", r"\s+") for h in _HEADINGS), key=len, reverse=True))
# A heading is at the start of a line and is followed by a colon, or stands alone on its line.
_HEADING_RE = re.compile(rf"^[ \t]*(?P<name>{_HEADING_WORDS})[ \t]*(?::[ \t]*|(?=[ \t]*$))", re.IGNORECASE | re.MULTILINE)

# Abbreviations whose full stop never ends a sentence (compared lower-case, without the final dot).
ABBREVIATIONS = frozenset({
    "approx", "appr", "e.g", "i.e", "vs", "dr", "incl", "ca", "cf", "fig", "resp", "max", "mult", "prox", "ant",
    "post", "sup", "inf", "lat", "med", "st", "mt", "pt", "pts", "hx", "dx", "sx", "tx", "w", "w/", "abd", "esp",
    "b/l", "bilat", "ext", "int", "seg", "est", "dept", "dist",
})
# Units: their full stop ends a sentence only when a capitalised word follows ("2 cm. The ...").
UNITS = frozenset({"cm", "mm", "ml", "cc", "hu", "m", "kg", "sec", "s", "min", "mgy", "msv", "kv", "mas", "etc"})

# "LIVER:" / "Lung bases:" at the start of a line inside a section: an organ sub-heading of a structured report.
# It is not part of any sentence; it becomes Sentence.heading of the sentences on its line, or, when it stands alone
# on its line, of the lines below it up to the next blank line.
_SUBHEADING_RE = re.compile(r"[ \t]*(?:[-*\u2022]\s*)?([A-Za-z][A-Za-z /&,-]{1,40}?):(?:[ \t]+|[ \t]*(?=\r?\n|$))")
_LIST_MARKER_RE = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*\u2022\u00b7])\s+")
_SENT_END_RE = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_WORD_BEFORE_RE = re.compile(r"([A-Za-z0-9./]+)$")


def split_sections(text: str) -> list[tuple[str, int, int]]:
    """[(section, start, end)] covering the report; text before any heading is section "body"."""
    spans: list[tuple[str, int, int]] = []
    matches = list(_HEADING_RE.finditer(text))
    first = matches[0].start() if matches else len(text)
    if text[:first].strip():
        spans.append(("body", 0, first))
    for i, m in enumerate(matches):
        name = re.sub(r"\s+", " ", m.group("name").upper())
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        spans.append((_HEADINGS[name], m.end(), end))
    return spans


def _is_list_number(chunk: str, unit_start: int, dot: int) -> bool:
    """True if the full stop at ``dot`` closes a list marker such as "2." at the start of the current unit."""
    return re.fullmatch(r"\s*\(?\d{1,2}", chunk[unit_start:dot]) is not None


def _ends_sentence(chunk: str, unit_start: int, dot: int, after: int) -> bool:
    """Decide whether the punctuation run chunk[dot:after] ends a sentence (see the module docstring)."""
    rest = chunk[after:].lstrip(" \t")
    if not rest or rest[0] in "\r\n":
        return True
    if chunk[dot] in "!?":
        return True
    if _is_list_number(chunk, unit_start, dot):
        return False
    m = _WORD_BEFORE_RE.search(chunk[unit_start:dot])
    word = m.group(1).lower() if m else ""
    if word in ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):  # "e.g", "i.e", "a.k.a"
        return False
    nxt = rest[0]
    if nxt.isupper() or nxt in "-*\u2022\u00b7(\"'":
        return True
    if nxt.isdigit():  # a new numbered item ("... cyst. 2. Gallstones"), not "approx. 3 cm"
        return re.match(r"\d{1,2}[.)]\s", rest) is not None and word not in UNITS
    return False  # lower-case continuation: "2 cm. lesion", "the liver. and"


def _raw_units(chunk: str) -> list[tuple[int, int]]:
    """Cut a section's text into (start, end) spans of candidate sentences."""
    cuts: list[tuple[int, int]] = []
    start = 0
    i = 0
    n = len(chunk)
    while i < n:
        c = chunk[i]
        if c in ".!?":
            m = _SENT_END_RE.match(chunk, i)
            if m and _ends_sentence(chunk, start, i, m.end()):
                cuts.append((start, m.end()))
                start = i = m.end()
                continue
            i = m.end() if m else i + 1
            continue
        if c == ";":
            cuts.append((start, i))
            start = i = i + 1
            continue
        if c == "\n":
            before = chunk[start:i].rstrip()
            after = chunk[i + 1:].lstrip(" \t\r")
            new_statement = (not after or after[0] == "\n" or after[0].isupper() or after[0].isdigit()
                             or after[0] in "-*\u2022\u00b7(")
            if not before or before[-1] in ".!?:;" or new_statement:
                cuts.append((start, i))
                start = i + 1
        i += 1
    cuts.append((start, n))
    return cuts


def _subheading_at(chunk: str, pos: int) -> str:
    """The sub-heading in force at ``pos``: the one opening its line, else a bare one above it in the same block."""
    line_start = chunk.rfind("\n", 0, pos) + 1
    m = _SUBHEADING_RE.match(chunk, line_start)
    if m:
        return m.group(1).strip()
    while line_start > 0:  # walk up through the lines of this block (a blank line ends it)
        prev_start = chunk.rfind("\n", 0, line_start - 1) + 1
        line = chunk[prev_start:line_start - 1]
        if not line.strip():
            return ""
        m = _SUBHEADING_RE.fullmatch(line.rstrip("\r"))
        if m:
            return m.group(1).strip()
        line_start = prev_start
    return ""


def split_sentences(text: str) -> list[Sentence]:
    """The report as single-finding sentences, in order, each with its section and character span."""
    out: list[Sentence] = []
    for section, s0, s1 in split_sections(text):
        chunk = text[s0:s1]
        for a, b in _raw_units(chunk):
            piece = chunk[a:b]
            m = _LIST_MARKER_RE.match(piece)
            lead = m.end() if m else len(piece) - len(piece.lstrip())
            at_line_start = not chunk[:a].strip(" \t").endswith(tuple(".!?;:,")) and (
                a == 0 or chunk[:a].rstrip(" \t").endswith("\n") or not chunk[:a].strip())
            h = _SUBHEADING_RE.match(piece, lead) if at_line_start else None
            if h:
                lead = h.end()  # the sub-heading is metadata (Sentence.heading), not sentence text
            body = piece[lead:].rstrip()
            clean = re.sub(r"\s+", " ", body).strip()
            if not re.search(r"[A-Za-z\u00C0-\u024F\u0370-\u03FF\u0400-\u04FF\u4e00-\u9fff]", clean):
                continue  # separators, lone numbers, "***"
            heading = h.group(1).strip() if h else _subheading_at(chunk, a + lead)
            out.append(Sentence(clean, section, s0 + a + lead, s0 + a + lead + len(body), heading=heading))
    return out


def normalise_for_match(sentence_text: str) -> str:
    """Comparable form of a sentence for split evaluation: lower-case, single spaces, no list marker, no final stop."""
    t = _LIST_MARKER_RE.sub("", sentence_text.strip())
    t = re.sub(r"\s+", " ", t).strip().lower()
    return t.rstrip(" .;:!?")
