"""Is this report English? A cheap check before parsing, so a German or French report is marked "not processable"
instead of being labelled "no findings" (which would teach the models that a sick patient is healthy).

Method: the share of word tokens that are common English function words or words of our radiology lexicon. The
lexicon is English function words plus every word of the ontology's findings and prompts. English report prose
scores ~0.7-1.0; German, French, Italian score under 0.15 and Spanish ~0.35 (it shares "no", "normal", "pleural"),
because their function words ("die", "le", "el") and organ words ("Leber", "foie", "higado") are not in the lists.
"""

from __future__ import annotations

import re

ENGLISH_STOPWORDS = frozenset("""
a an the and or but nor of in on at to for from by with without within into onto over under is are was were be been
being has have had do does did no not there this that these those it its as than then also both either neither each
any all some which who whom whose what when where while after before since during between per about above below
again further more most less least very only same so too can cannot could may might must should would will shall
is seen noted identified present measures measuring measure likely possibly probably small large mild moderate
severe minimal new stable unchanged interval prior previous compared left right bilateral normal unremarkable
evidence acute chronic findings impression technique comparison history indication none other again
""".split())

RADIOLOGY_WORDS = frozenset("""
liver hepatic spleen splenic pancreas pancreatic kidney kidneys renal adrenal adrenals stomach gastric esophagus
bowel colon colonic bladder prostate aorta aortic lung lungs pulmonary pleural heart cardiac coronary spine vertebral
osseous bone bones lesion lesions cyst cysts nodule nodules mass stone stones calculus effusion ascites fluid air
fracture hernia dilatation dilation thickening enlarged enlargement atrophy calcification calcifications
contrast phase arterial venous portal ct scan abdomen pelvis chest size caliber attenuation density dependent
lobe lobes gallbladder ducts duct biliary lymph nodes node wall mm cm segment focal diffuse enhancement hypodense
""".split())



def _ontology_words() -> frozenset[str]:
    from appliance.ontology import FINDINGS, ORGANS

    phrases = [o.display for o in ORGANS] + [o.name for o in ORGANS]
    for f in FINDINGS:
        phrases += [f.display, f.name, *f.positive_prompts, *f.negative_prompts, *f.synonyms]
    return frozenset(w for p in phrases for w in re.findall(r"[a-z]+", p.lower()))


LEXICON = ENGLISH_STOPWORDS | RADIOLOGY_WORDS | _ontology_words()
MIN_WORDS_TO_JUDGE = 4  # why: "Normal." or "No change." are too short to tell a language apart
ENGLISH_MIN_SHARE = 0.4


def english_share(text: str) -> tuple[float, int]:
    """(share of words that are English function or radiology words, number of words)."""
    words = re.findall(r"[^\W\d_]+", text.lower())
    if not words:
        return 0.0, 0
    hits = sum(1 for w in words if w in LEXICON)
    return hits / len(words), len(words)


def looks_english(text: str) -> tuple[bool, str]:
    """(True, "") when the text can be parsed as English; (False, reason for the admin) otherwise."""
    share, n = english_share(text)
    if n < MIN_WORDS_TO_JUDGE:
        return True, ""
    if share < ENGLISH_MIN_SHARE:
        return False, (f"report does not look like English ({share:.0%} of {n} words are English function or "
                       f"radiology words, at least {ENGLISH_MIN_SHARE:.0%} expected); only English reports are parsed")
    return True, ""
