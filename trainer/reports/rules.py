"""The deterministic report-sentence labeller: a lexicon built from the ontology plus NegEx-style negation scope.

How a sentence is labelled (label_sentence):
1. Organ words ("liver", "hepatic", "renal", "pulmonary", ...) and context words ("bile ducts", "lymph nodes",
   "collecting system", "bowel loops") are found, longest match first.
2. Finding mentions are found two ways: fixed phrases (the ontology's synonyms and positive prompts plus a few
   clinical variants: "cholelithiasis", "hydronephrosis"), and cue words that mean a finding only next to an organ
   ("cyst" + kidney -> renal cyst, + liver -> liver lesion; "enlarged" + spleen -> splenomegaly). Some phrases are
   *normal forms* ("the spleen is normal in size", "the pleural spaces are clear"): they name the finding and say it
   is absent, so the sentence is "normal" for that finding.
3. Negation: pre-triggers ("no", "without", "negative for", "free of", ...) negate forward, post-triggers
   ("... has resolved", "... is not seen") negate backward, both only up to a terminator ("but", "however", ...).
   Pseudo-triggers ("no change in", "cannot be excluded") are not negations.
4. Polarity: any non-negated finding -> "positive" (the first one is the label); only negated findings ->
   "negated"; only normal forms -> "normal"; no finding but an organ with "unremarkable"/"normal"/"no abnormality"
   -> "normal"; sentences in indication/technique/comparison sections, recommendations, and sentences naming no
   organ and no finding -> "not_a_finding".

Documented choices:
- Hedging ("likely", "possible", "cannot exclude", "suspicious for") is labelled **positive** with hedged=True:
  a radiologist who writes "cannot exclude a stone" wants the stone looked at, and for training pairs an uncertain
  mention is closer to present than to absent. "Unlikely" is the exception: it is a negation.
- A sentence with one positive and one negated finding ("No hydronephrosis, but a 4 mm renal stone") is labelled with
  the positive one: missing a positive is worse for training labels than missing a negative.
- Organ: a finding's organ is the first organ the sentence names among the finding's ontology organs, else the
  finding's primary organ ("Ascites." -> liver, as in the ontology); without a finding, the first organ named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.ontology import CATEGORY_FINDINGS, FINDINGS_BY_NAME
from trainer.reports.labels import NON_FINDING_SECTIONS, Sentence, SentenceLabel

# --- organ and context words ------------------------------------------------------------------------------------
# key -> regex. Keys that are organ names become the sentence's organs; keys starting with "@" are context only.
CONTEXT_PATTERNS: dict[str, str] = {
    "colon": r"\b(?:hepatic|splenic) flexure\b|\bcolon\w*|\blarge (?:bowel|intestines?)\b|\bsigmoid\b|\bcec(?:um|al)\b"
             r"|\brect(?:um|al)\b|\bdiverticul\w*|\brectosigmoid\b",
    "gallbladder": r"\bgall[- ]?bladders?\b|\bcholecyst\w*|\bcholelith\w*|\bgallstones?\b|\bpericholecystic\b",
    "liver": r"\blivers?\b|\bhepat\w*|\b\w+hepatic\b|\bcaudate\b|\bhepatocellular\b"
             r"|\b(?:couinaud )?segments? (?:[1-8]|i{1,3}|iv[ab]?|vi{0,3})\b",  # Couinaud segments
    "spleen": r"\bspleens?\b|\bsplen\w*",
    "pancreas": r"\bpancrea\w*",
    "adrenal_glands": r"\badrenals?\b|\bsuprarenal\b|\badrenal glands?\b",
    "kidneys": r"\bkidneys?\b|\brenal\b|\bnephr\w*|\bperinephric\b|\bperirenal\b|\bhydronephros\w*"
               r"|\bureter\w*|\bpuj\b|\bvuj\b|\buvj\b|\bpelviureteric\b"  # ureters: the kidneys' crop has them
               r"|\bhydroureteronephros\w*|\bpelvi?cal[iy]\w*|\bcaliectasis\b|\bbosniak\b",
    "stomach": r"\bstomach\b|\bgastr\w*",
    "esophagus": r"\bo?esophag\w*",
    "small_bowel": r"\bsmall (?:and large )?(?:bowel|intestines?)\b|\bduoden\w*|\bjejun\w*|\bile(?:um|al)\b|\bsbo\b",
    "urinary_bladder": r"\b(?:urinary )?bladder\b",
    "prostate": r"\bprostat\w*|\bbph\b",
    "aorta": r"\baort\w*|\bpara-?aortic\b",
    "lungs": r"\blungs?\b|\bpulmonar\w*|\bpleura\w*|\b(?:upper|lower|middle) lobes?\b|\blingul\w*|\bbibasilar\b"
             r"|\blung bases?\b|\bhydrothora\w*|\bpneumothora\w*|\bbronch\w*|\bintrapulmonary\b",
    "heart": r"\bhearts?\b|\bcardi\w*|\bcoronar\w*|\bpericardi\w*|\bmyocard\w*",
    "spine": r"\bspin(?:e|al)\b|\bvertebra\w*|\blumbar\b|\bthoracolumbar\b|\bosseous\b|\bbon(?:e|es|y)\b|\bsacr\w*"
             r"|\b[ctl]\d{1,2}\b|\bendplates?\b|\bskelet\w*",
    "@bile": r"\bbil(?:e|iary)\b|\bbile ducts?\b|\bcbd\b|\bcommon duct\b|\bcholedoch\w*",
    "@collecting": r"\bcollecting systems?\b|\brenal pelv(?:is|es)\b|\bpelvi?cal[iy]\w*|\bcalyc\w*|\bcalic\w*",
    "@lymph": r"\blymph\b|\blymph nodes?\b|\bnodes\b|\bnodal\b",
    "@bowel": r"\bbowel\b|\bbowel loops?\b|\bloops\b|\bintestin\w*",
}
# Patterns may overlap; the longer match wins (find_context), so "gall bladder" is not a urinary bladder, and on a
# tie the earlier key wins ("pelvicalyceal" is kidneys, not @collecting).
_CONTEXT_RES = [(k, re.compile(v)) for k, v in CONTEXT_PATTERNS.items()]


# --- finding lexicon ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cue:
    """A word that means a finding depending on its context: {context key: finding or None}; default without one."""

    pattern: str
    by_context: dict
    default: str | None = None
    normal_form: bool = False
    # the default applies only when the sentence names no organ at all ("calcified gallstones" is not a plaque)
    default_without_organ: bool = False


# Fixed phrases that always mean their finding (added to the ontology's synonyms and positive prompts).
EXTRA_PHRASES: dict[str, tuple[str, ...]] = {
    "hepatic_steatosis": (r"steato\w*", r"fatty (?:infiltration|liver|change\w*)", r"fatty infiltrat\w*",
                          r"diffus\w* (?:low|decreased|reduced) (?:attenuation|density)",
                          r"(?:decreased|low|reduced) (?:hepatic|liver) (?:attenuation|density)",
                          r"(?:low|decreased|reduced) (?:attenuation|density) of the liver",
                          r"(?:liver|hepatic parenchyma) is diffusely hypo(?:attenuat|dens)\w*"),
    "hepatomegaly": (r"hepatomegal\w*",),
    "splenomegaly": (r"splenomegal\w*",),
    "cardiomegaly": (r"cardiomegal\w*",),
    "prostatomegaly": (r"prostatomegal\w*", r"bph", r"benign prostatic hyperplasia"),
    "gallstones": (r"cholelith\w*", r"gallstones?", r"gall stones?"),
    "kidney_stone": (r"nephrolith\w*", r"urolith\w*", r"renal calcul\w*", r"renal stones?", r"kidney stones?"),
    "hydronephrosis": (r"hydro(?:uretero)?nephros\w*", r"pelvi?cal[iy]ectasis", r"caliectasis",
                       r"pelvi?cal[iy]ceal dilat\w*"),
    "aortic_aneurysm": (r"aneurys\w*", r"aaa"),
    "bowel_obstruction": (r"sbo", r"ileus", r"(?:small )?bowel obstruction"),
    "free_air": (r"free (?:intraperitoneal |intra-abdominal |abdominal )?(?:air|gas)", r"pneumoperitoneum",
                 r"extraluminal (?:free )?(?:air|gas)"),
    "ascites": (r"ascit\w*", r"free fluid", r"perihepatic fluid", r"intraperitoneal fluid", r"intra-abdominal fluid"),
    "pleural_effusion": (r"pleural (?:effusion|fluid)s?", r"hydrothora\w*"),
    "atelectasis": (r"atelecta\w*",),
    "lymphadenopathy": (r"lymphadenopath\w*", r"adenopath\w*"),
    "osteopenia": (r"osteopen\w*", r"osteopor\w*", r"demineraliz\w*",
                   r"(?:low|decreased|reduced|diminished) bone (?:mineral )?(?:density|mineralization)"),
    "metastatic_disease": (r"metasta\w*",),
    "hiatal_hernia": (r"hiat(?:al|us) hernia",),
    "fracture": (r"fractur\w*", r"(?:compression|wedge) deformit\w*"),
    "renal_cyst": (r"bosniak \w+ (?:renal )?cysts?",),
    "coronary_calcification": (r"coronary (?:artery )?calcifications?", r"calcified coronar\w*(?: arteries)?"),
}
# Fixed phrases that say a finding is absent (normal forms); from the ontology's negative prompts where they carry
# no negation word themselves, plus clinical variants.
NORMAL_PHRASES: dict[str, tuple[str, ...]] = {
    "hepatic_steatosis": (r"normal (?:hepatic |liver )?(?:attenuation|density)(?: of the liver)?",
                          r"liver (?:has|demonstrates|shows) normal (?:attenuation|density)"),
    "hiatal_hernia": (r"gastroesophageal junction is in normal position",),
    "bowel_wall_thickening": (r"normal bowel wall(?: thickness)?",),
    "bladder_wall_thickening": (r"normal (?:urinary )?bladder wall(?: thickness)?",),
    "pancreatic_atrophy": (r"normal pancreatic parenchyma",),
    "pleural_effusion": (r"pleural spaces? (?:are|is) clear", r"clear pleural spaces?"),
    "atelectasis": (r"lungs are fully expanded", r"fully expanded lungs?"),
    "fracture": (r"vertebral bodies (?:are|appear) intact", r"vertebral body heights? (?:are|is) (?:preserved|maintained|normal)"),
    "osteopenia": (r"normal bone (?:mineral )?(?:density|mineralization)", r"normally mineralized",
                   r"bone (?:mineral )?density is normal"),
}
# Cue words: finding depends on the organ/context near them.
_SIZE = {"liver": "hepatomegaly", "spleen": "splenomegaly", "heart": "cardiomegaly", "prostate": "prostatomegaly",
         "@lymph": "lymphadenopathy"}
_CALIBRE = {"aorta": "aortic_aneurysm", "@bile": "biliary_dilation", "@collecting": "hydronephrosis",
            "small_bowel": "bowel_obstruction", "colon": "bowel_obstruction", "@bowel": "bowel_obstruction"}
CUES: tuple[Cue, ...] = (
    Cue(r"cyst(?:s|ic)?\b", {"kidneys": "renal_cyst", "liver": "liver_lesion", "pancreas": None}),
    Cue(r"lesions?|hypodens\w*|hypo-?attenuat\w*|low[- ]attenuation|hypoenhanc\w*|mass(?:es)?|hemangioma\w*"
        r"|tumou?rs?|neoplas\w*|focal abnormalit\w*|hypodensit\w*",
        {"liver": "liver_lesion", "kidneys": "renal_hypodensities", "adrenal_glands": "adrenal_nodule",
         "lungs": "lung_nodule"}),
    Cue(r"nodul\w*|adenomas?", {"lungs": "lung_nodule", "adrenal_glands": "adrenal_nodule", "liver": "liver_lesion",
                                "@lymph": None}),
    Cue(r"enlarg\w*|megaly|increased in size|hypertroph\w*|prominent", _SIZE),
    Cue(r"normal (?:in )?size|normal[- ]sized?|size is normal|normal dimensions|normal (?:in )?volume",
        {**_SIZE, "pancreas": "pancreatic_atrophy"}, normal_form=True),
    Cue(r"atroph\w*|volume loss", {"pancreas": "pancreatic_atrophy"}),
    Cue(r"stones?|calcul\w*|lith\w*", {"kidneys": "kidney_stone", "@collecting": "kidney_stone",
                                       "gallbladder": "gallstones", "@bile": "gallstones"}),
    Cue(r"dilat\w*|ectasia|ectatic|distend\w*|distension|distention|aneurysmal", _CALIBRE),
    Cue(r"normal (?:in )?(?:caliber|calibre|diameter)|non-?dilated|normal-caliber|normal-calibre",
        _CALIBRE, normal_form=True),
    Cue(r"(?:wall |mural )?thicken\w*|thickened|submucosal edema",
        {"urinary_bladder": "bladder_wall_thickening", "small_bowel": "bowel_wall_thickening",
         "colon": "bowel_wall_thickening", "@bowel": "bowel_wall_thickening", "stomach": None, "esophagus": None}),
    Cue(r"calcif\w*|plaques?|atherosc\w*|atheromat\w*",
        {"heart": "coronary_calcification", "aorta": "atherosclerosis",
         "lungs": None, "kidneys": None, "pancreas": None, "liver": None, "spleen": None, "prostate": None},
        default="atherosclerosis", default_without_organ=True),
    Cue(r"effusions?", {"lungs": "pleural_effusion", "heart": None}, default="pleural_effusion"),
    Cue(r"fluid", {"lungs": "pleural_effusion", "liver": "ascites", "spleen": "ascites", "heart": None},
        default="ascites", default_without_organ=True),
    Cue(r"hernia\w*", {"stomach": "hiatal_hernia", "esophagus": "hiatal_hernia"}),
    Cue(r"obstruct\w*", {"@bowel": "bowel_obstruction", "small_bowel": "bowel_obstruction",
                         "colon": "bowel_obstruction"}),
    Cue(r"collaps\w*", {"lungs": "atelectasis", "spine": "fracture"}, default="atelectasis",
        default_without_organ=True),
    Cue(r"height loss|loss of (?:vertebral )?(?:body )?height|wedg\w*", {"spine": "fracture"}),
)


def _phrase_regex(phrase: str) -> str:
    """A plain ontology phrase as a regex: flexible whitespace/hyphens, optional plural at the end."""
    words = [re.escape(w) for w in re.split(r"[\s-]+", phrase.lower().strip()) if w]
    return r"[\s-]+".join(words) + r"(?:s|es)?"


def _build_fixed() -> list[tuple[re.Pattern, str, bool]]:
    entries: list[tuple[str, str, bool]] = []
    for f in CATEGORY_FINDINGS:
        for p in (f.name.replace("_", " "), f.display, *f.synonyms, *f.positive_prompts):
            entries.append((_phrase_regex(p), f.name, False))
        for p in EXTRA_PHRASES.get(f.name, ()):
            entries.append((p, f.name, False))
        for p in NORMAL_PHRASES.get(f.name, ()):
            entries.append((p, f.name, True))
    # generic one-word synonyms that need context to be right are handled by CUES, not as fixed phrases
    ambiguous = {"fracture", "calcified plaque", "aneurysm", "free fluid"}
    out = []
    seen = set()
    for rx, name, normal in entries:
        key = (rx, name, normal)
        if key in seen or rx in ambiguous:
            continue
        seen.add(key)
        out.append((re.compile(rf"\b(?:{rx})\b"), name, normal))
    return out


_FIXED = _build_fixed()
_CUES = [(re.compile(rf"\b(?:{c.pattern})\b"), c) for c in CUES]

# --- negation, hedging, normal statements, phase -----------------------------------------------------------------
PRE_NEGATION = (r"no", r"not", r"without", r"negative for", r"free of", r"absence of", r"absent", r"no evidence of",
                r"no signs? of", r"rather than", r"resolution of", r"resolved", r"neither", r"nor", r"never",
                r"unlikely", r"no longer", r"none", r"nothing to suggest", r"lack of", r"ruled out",
                r"there is no", r"there are no", r"no definite", r"no suspicious", r"no significant")
POST_NEGATION = (r"(?:has|have)?\s*resolved", r"(?:is|are|was|were)? ?absent", r"(?:is|are|was|were)? ?not "
                 r"(?:seen|identified|present|visuali[sz]ed|demonstrated|detected|appreciated|evident)",
                 r"(?:is|are|has been|have been)? ?(?:excluded|ruled out)", r"(?:is|are)? ?unlikely",
                 r"no longer (?:seen|present|visible|identified)")
PSEUDO_NEGATION = (r"no (?:significant |interval |substantial )?(?:change|increase|decrease|growth)",
                   r"not (?:significantly )?(?:changed|increased|decreased)", r"without (?:significant |interval )?change",
                   r"not only", r"can ?not (?:be )?(?:excluded|ruled out)", r"cannot (?:exclude|rule out)",
                   r"could not be (?:excluded|ruled out)", r"not (?:be )?(?:excluded|ruled out)",
                   r"no further", r"unchanged", r"gram negative", r"surgically (?:absent|removed)")
HEDGES = (r"likely", r"probabl[ey]", r"possibl[ey]", r"may (?:represent|reflect|be)", r"might", r"could (?:represent|be)",
          r"suspicious for", r"suspected", r"suggestive of", r"concerning for", r"cannot (?:be )?exclude\w*",
          r"can not be excluded", r"cannot rule out", r"not (?:be )?(?:excluded|ruled out)", r"questionabl[ey]",
          r"equivocal", r"indeterminate", r"presumed", r"presumably", r"suggest(?:s|ing)?", r"question of",
          r"differential (?:diagnosis )?includes")
TERMINATORS = (r"but", r"however", r"although", r"though", r"yet", r"except", r"apart from", r"aside from",
               r"besides", r"other than", r"with the exception of", r"which", r"whereas", r"while", r"nevertheless",
               r"there is", r"there are", r"is seen", r"are seen", r"is noted", r"are noted", r"is present",
               r"are present", r"consistent with", r"compatible with", r"representing", r"likely", r"suggest\w*")
NEGATION_MAX_WORDS = 12  # why a cap: a "no" at the start of a long sentence should not negate its last clause

GENERIC_NORMAL = re.compile(
    r"\b(?:unremarkable|normal|normally|within normal limits|wnl|intact|patent|preserved|grossly normal"
    r"|no (?:\w+ ){0,3}(?:abnormalit\w*|findings?|pathology|process|disease)|not remarkable|clear|homogeneous"
    r"|appears? normal|no significant abnormalit\w*)\b")
RECOMMENDATION = re.compile(
    r"^\s*(?:recommend\w*|suggest\w* (?:follow|further|clinical|correlation)|follow[- ]?up\b|clinical correlation"
    r"|correlat\w*|consider\w*|further evaluation)|\brecommended\b|\bis advised\b|\bclinical correlation\b")
# When a technique statement is made, the phase (not the patient) is what it describes.
PHASE_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("non_contrast", re.compile(r"\bnon-?contrast\w*|\bnon-?enhanced\b|\bunenhanced\b|\bwithout (?:iv |intravenous |oral "
                                r"and iv |oral or iv )?contrast\b|\bplain ct\b|\bno (?:iv |intravenous )?contrast\b"
                                r"|\bnative phase\b|\bprecontrast\b|\bpre-contrast\b")),
    ("arterial", re.compile(r"\b(?:late |early )?arterial(?:[- ]phase| phase| dominant phase)\b|\bcta\b"
                            r"|\barterial\b(?=[^.]*\bphases?\b)"
                            r"|\bct angiogra\w*|\bangiographic phase\b")),
    ("portal_venous", re.compile(r"\bportal[- ]?venous\b|\bvenous phase\b|\bpv phase\b|\bportal phase\b")),
)


def _alt(words) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(sorted(words, key=len, reverse=True)) + r")\b")


_PRE_RE = _alt(PRE_NEGATION)
_POST_RE = _alt(POST_NEGATION)
_PSEUDO_RE = _alt(PSEUDO_NEGATION)
_HEDGE_RE = _alt(HEDGES)
_TERM_RE = re.compile(r"\b(?:" + "|".join(sorted(TERMINATORS, key=len, reverse=True)) + r")\b|[;:]")


@dataclass(frozen=True)
class Mention:
    finding: str
    start: int
    end: int
    normal_form: bool
    negated: bool = False


def _non_overlapping(spans: list[tuple[int, int, object]]) -> list[tuple[int, int, object]]:
    """Longest-first greedy selection of non-overlapping spans, returned in text order."""
    chosen: list[tuple[int, int, object]] = []
    for s in sorted(spans, key=lambda t: (-(t[1] - t[0]), t[0])):
        if all(s[1] <= c[0] or s[0] >= c[1] for c in chosen):
            chosen.append(s)
    return sorted(chosen, key=lambda t: t[0])


def find_context(text: str) -> list[tuple[int, int, str]]:
    """Organ and context words in lower-cased ``text``: [(start, end, key)] in text order, no overlaps."""
    spans = [(m.start(), m.end(), k) for k, rx in _CONTEXT_RES for m in rx.finditer(text)]
    return _non_overlapping(spans)  # type: ignore[return-value]


def _real_matches(rx: re.Pattern, text: str) -> list[re.Match]:
    """Matches of a trigger pattern that are not part of a pseudo-trigger ("no change", "surgically absent")."""
    pseudo = [(m.start(), m.end()) for m in _PSEUDO_RE.finditer(text)]
    return [m for m in rx.finditer(text) if not any(m.start() < pe and m.end() > ps for ps, pe in pseudo)]


def negation_scopes(text: str) -> list[tuple[int, int]]:
    """Character ranges of lower-cased ``text`` that a negation trigger covers."""
    pseudo = [(m.start(), m.end()) for m in _PSEUDO_RE.finditer(text)]

    def in_pseudo(a: int, b: int) -> bool:
        return any(a < pe and b > ps for ps, pe in pseudo)

    terms = [(m.start(), m.end()) for m in _TERM_RE.finditer(text)]
    scopes: list[tuple[int, int]] = []
    for m in _PRE_RE.finditer(text):
        if in_pseudo(m.start(), m.end()):
            continue
        end = next((ts for ts, te in terms if ts >= m.end()), len(text))
        # cap the scope at NEGATION_MAX_WORDS words
        words = list(re.finditer(r"\S+", text[m.end():end]))
        if len(words) > NEGATION_MAX_WORDS:
            end = m.end() + words[NEGATION_MAX_WORDS - 1].end()
        scopes.append((m.end(), end))
    for m in _POST_RE.finditer(text):
        if in_pseudo(m.start(), m.end()):
            continue
        start = max([te for ts, te in terms if te <= m.start()], default=0)
        scopes.append((start, m.start()))
    return scopes


def _coordinated(text: str, context, start: int, cue: Cue) -> str | None:
    """The finding named through a context word coordinated just before position ``start`` ("X or Y effusion")."""
    for cs, ce, key in reversed([c for c in context if c[1] <= start]):
        if not re.fullmatch(r"\s*(?:,|or|and|and/or)\s*", text[ce:start]):
            return None
        if cue.by_context.get(key) is not None:
            return cue.by_context[key]
        start = cs
    return None


def find_mentions(text: str, context: list[tuple[int, int, str]] | None = None) -> list[Mention]:
    """Finding mentions in lower-cased ``text``, negation applied, in text order."""
    context = find_context(text) if context is None else context
    fixed = [(m.start(), m.end(), (name, normal)) for rx, name, normal in _FIXED for m in rx.finditer(text)]
    fixed = _non_overlapping(fixed)
    raw: list[tuple[int, int, object]] = list(fixed)
    for rx, cue in _CUES:
        for m in rx.finditer(text):
            if any(m.start() < fe and m.end() > fs for fs, fe, _ in fixed):
                continue  # a fixed phrase already explains these words
            # nearest context word whose key the cue knows decides the finding
            by_distance = sorted(context, key=lambda c: min(abs(c[0] - m.end()), abs(m.start() - c[1])))
            has_organ = any(not k.startswith("@") for _, _, k in context)
            name = None if (cue.default_without_organ and has_organ) else cue.default
            for cs, ce, key in by_distance:
                if key in cue.by_context:
                    name = cue.by_context[key]
                    if name is None:  # "pleural or pericardial effusion": a coordinated word before may name it
                        name = _coordinated(text, context, cs, cue)
                    break
            if name is not None:
                raw.append((m.start(), m.end(), (name, cue.normal_form)))
    scopes = negation_scopes(text)
    out = []
    for s, e, (name, normal) in sorted(raw, key=lambda t: t[0]):
        negated = any(ss <= s < se for ss, se in scopes)  # the scope must reach the mention's first word
        out.append(Mention(name, s, e, normal, negated))
    return out


def detect_phase(text: str) -> str | None:
    """The contrast phase a sentence states, first mention wins; None when it states none."""
    low = text.lower()
    hits = [(m.start(), name) for name, rx in PHASE_PATTERNS for m in [rx.search(low)] if m]
    return min(hits)[1] if hits else None


def _organ_for(finding_name: str | None, organs: list[str]) -> str | None:
    if finding_name is None:
        return organs[0] if organs else None
    f_organs = FINDINGS_BY_NAME[finding_name].organs
    for o in organs:
        if o in f_organs:
            return o
    return f_organs[0]


def label_sentence(sentence: Sentence | str, section: str | None = None) -> SentenceLabel:
    """Label one sentence (see the module docstring for the rules)."""
    if isinstance(sentence, Sentence):
        text, section = sentence.text, sentence.section if section is None else section
    else:
        text = sentence
    low = text.lower()
    phase = detect_phase(low)
    context = find_context(low)
    heading = sentence.heading.lower() if isinstance(sentence, Sentence) else ""
    if heading and not any(not k.startswith("@") for _, _, k in context):
        # "LIVER: ... No focal lesion.": the line's sub-heading names the organ; read it as if written before
        low = f"{heading}: {low}"
        context = find_context(low)
    organs = list(dict.fromkeys(k for _, _, k in context if not k.startswith("@")))
    hedged = _HEDGE_RE.search(low) is not None and not re.search(r"\bunlikely\b", low)

    def label(polarity, finding=None, organ_name=None, hedge=False):
        organ_name = organ_name if organ_name is not None else _organ_for(finding, organs)
        ordered = tuple(dict.fromkeys(([organ_name] if organ_name else []) + organs))
        return SentenceLabel(organ_name, polarity, finding, phase, hedged=hedge, organs=ordered)

    if section in NON_FINDING_SECTIONS or RECOMMENDATION.search(low):
        return SentenceLabel(None, "not_a_finding", None, phase)
    mentions = find_mentions(low, context)
    positives = [m for m in mentions if not m.negated and not m.normal_form]
    if positives:
        return label("positive", positives[0].finding, hedge=hedged)
    # a negated normal form ("not normal in size") says the finding is present
    flipped = [m for m in mentions if m.negated and m.normal_form]
    if flipped:
        return label("positive", flipped[0].finding, hedge=hedged)
    negated = [m for m in mentions if m.negated]
    if negated:
        return label("negated", negated[0].finding)
    normals = [m for m in mentions if m.normal_form]
    if normals:
        return label("normal", normals[0].finding)
    generic_normal = GENERIC_NORMAL.search(low) is not None
    first_pre = next(iter(_real_matches(_PRE_RE, low)), None)
    if not organs:
        # "No acute abnormality." is a statement about the patient; "No hemoperitoneum." a negated one outside the
        # catalogue; other organ-less text is not a finding
        if generic_normal and re.search(r"\b(?:no|normal|unremarkable)\b", low):
            return label("normal")
        if first_pre and first_pre.start() < 3:
            return label("negated")
        return label("not_a_finding")
    if generic_normal:
        return label("normal")
    # Without a catalogue finding, a negation counts when it comes before the organ ("No suspicious osseous lesion")
    # or is the verb's ("the kidneys are not enlarged"), not when it trails ("Diverticulosis without diverticulitis").
    first_organ = min(s for s, _, k in context if not k.startswith("@"))
    if (first_pre and first_pre.start() < first_organ) or re.search(r"\b(?:is|are|was|were|appears?) not\b", low) \
            or _real_matches(_POST_RE, low):
        return label("negated")
    return label("positive", hedge=hedged)


def label_sentences(sentences: list[Sentence]) -> list[SentenceLabel]:
    return [label_sentence(s) for s in sentences]
