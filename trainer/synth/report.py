"""Free-text radiology reports written from the truth, with per-sentence truth for scoring report processing.

A report has TECHNIQUE, COMPARISON, FINDINGS (by organ) and IMPRESSION sections. Every finding in the truth (painted
in, or the real source patient's own) is stated positively (in FINDINGS, or only in the IMPRESSION for some), absent
findings are sometimes negated explicitly ("No gallstones."), organs without findings get normal statements, and
technique/comparison sentences are marked ``not_a_finding``. Two disjoint phrasing sets: ``train`` and ``heldout``
use different sentence frames, so a model trained on one is tested on sentences it has never seen (tests prove no
template is shared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from appliance.ontology import CATEGORY_FINDINGS, ORGANS_BY_NAME

NEGATION_CUE = re.compile(r"\b(no|not|without|negative for|absent)\b", re.I)

# finding -> (noun phrases for positive statements, noun phrases for negations, keyword regex for text checks)
LEXICON: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "hepatic_steatosis": (("hepatic steatosis", "diffuse fatty infiltration of the liver", "fatty liver"),
                          ("hepatic steatosis", "fatty infiltration of the liver"), r"steatosis|fatty"),
    "hepatomegaly": (("hepatomegaly", "an enlarged liver"), ("hepatomegaly",), r"hepatomegaly|enlarged liver"),
    "liver_lesion": (("a hypodense liver lesion", "a low attenuation hepatic lesion", "a focal liver lesion"),
                     ("focal liver lesion", "hypodense hepatic lesion"), r"liver lesion|hepatic lesion|hepatic cyst"),
    "biliary_dilation": (("intrahepatic biliary ductal dilation", "dilated intrahepatic bile ducts"),
                         ("biliary ductal dilation", "intrahepatic biliary dilatation"),
                         r"biliary|bile duct"),
    "gallstones": (("gallstones", "cholelithiasis"), ("gallstones", "cholelithiasis"), r"gallstone|cholelithiasis"),
    "splenomegaly": (("splenomegaly", "an enlarged spleen"), ("splenomegaly",), r"splenomegaly|enlarged spleen"),
    "pancreatic_atrophy": (("pancreatic atrophy", "an atrophic pancreas"), ("pancreatic atrophy",),
                           r"atroph"),
    "renal_cyst": (("a simple renal cyst", "a fluid attenuation renal cyst"), ("renal cyst", "cystic renal lesion"),
                   r"renal cyst|cystic renal"),
    "renal_hypodensities": (("a renal hypodensity", "a hypodense renal lesion"),
                            ("renal hypodensity", "hypodense renal lesion"), r"renal hypodensit|hypodense renal"),
    "hydronephrosis": (("hydronephrosis", "pelvicalyceal dilatation"), ("hydronephrosis",),
                       r"hydronephrosis|pelvicalyceal"),
    "kidney_stone": (("a renal calculus", "nephrolithiasis", "a kidney stone"), ("nephrolithiasis", "renal calculi"),
                     r"renal calcul|nephrolithiasis|kidney stone"),
    "adrenal_nodule": (("an adrenal nodule", "an adrenal mass"), ("adrenal nodule", "adrenal mass"),
                       r"adrenal (?:nodule|mass)"),
    "hiatal_hernia": (("a hiatal hernia", "a hiatus hernia"), ("hiatal hernia",), r"hiatal hernia|hiatus hernia"),
    "bowel_wall_thickening": (("bowel wall thickening", "thickening of the bowel wall"), ("bowel wall thickening",),
                              r"bowel wall|thickening of the bowel"),
    "bowel_obstruction": (("small bowel obstruction", "dilated fluid-filled small bowel loops"),
                          ("bowel obstruction", "dilated bowel loops"), r"obstruction|dilated .*bowel loops"),
    "free_air": (("free intraperitoneal air", "pneumoperitoneum"), ("free air", "pneumoperitoneum"),
                 r"free (?:intraperitoneal )?air|pneumoperitoneum"),
    "ascites": (("ascites", "free fluid in the abdomen"), ("ascites", "free fluid"), r"ascites|free fluid"),
    "pleural_effusion": (("a pleural effusion", "pleural fluid"), ("pleural effusion",), r"pleural (?:effusion|fluid)"),
    "atelectasis": (("dependent atelectasis", "atelectasis"), ("atelectasis",), r"atelecta"),
    "lung_nodule": (("a pulmonary nodule", "a solid lung nodule"), ("pulmonary nodules", "lung nodule"),
                    r"pulmonary nodule|lung nodule"),
    "cardiomegaly": (("cardiomegaly", "an enlarged heart"), ("cardiomegaly",), r"cardiomegaly|enlarged heart"),
    "coronary_calcification": (("coronary artery calcification", "calcified coronary arteries"),
                               ("coronary artery calcification",), r"coronary"),
    "aortic_aneurysm": (("an abdominal aortic aneurysm", "aneurysmal dilatation of the aorta"), ("aortic aneurysm",),
                        r"aneurysm"),
    "atherosclerosis": (("aortic atherosclerosis", "calcified atherosclerotic plaque of the aorta"),
                        ("aortic atherosclerosis",), r"atherosclero"),
    "lymphadenopathy": (("retroperitoneal lymphadenopathy", "enlarged para-aortic lymph nodes"),
                        ("lymphadenopathy", "enlarged lymph nodes"), r"lymphadenopathy|lymph node"),
    "bladder_wall_thickening": (("bladder wall thickening", "a thickened urinary bladder wall"),
                                ("bladder wall thickening",), r"bladder wall"),
    "prostatomegaly": (("prostatomegaly", "an enlarged prostate"), ("prostatomegaly",),
                       r"prostatomegaly|enlarged prostate"),
    "fracture": (("a vertebral compression fracture", "a compression fracture of the spine"), ("fracture",
                 "vertebral compression deformity"), r"fracture|compression deformity"),
    "osteopenia": (("osteopenia", "diffuse bone demineralization"), ("osteopenia",), r"osteopenia|demineraliz"),
    "metastatic_disease": (("metastatic disease", "multiple metastases"), ("metastatic disease",), r"metasta"),
}
assert set(LEXICON) == {f.name for f in CATEGORY_FINDINGS}

# Sentence frames per phrasing set; {NP}/{np} noun phrase, {where} location, {size} size phrase. Disjoint sets.
FRAMES = {
    "train": {
        "pos": ("There is {np}{where}{size}.", "{NP} is present{where}{size}.", "{NP} is seen{where}{size}."),
        "hedged": ("Likely {np}{where}{size}.", "Cannot exclude {np}{where}{size}."),
        "neg": ("No {neg}.", "There is no {neg}."),
        "normal": ("The {organ} is unremarkable.", "The {organ} appears normal.", "Normal {organ}."),
        "impr_pos": ("{NP}{where}{size}.",),
        "impr_normal": ("No acute abnormality in the abdomen or pelvis.",),
        "size": (" measuring {s}", ", {s} in size"),
        "technique": ("CT of the {region} was performed {contrast}.",
                      "Axial images were obtained through the {region} {contrast}."),
        "irrelevant": ("Coronal and sagittal reformats were reviewed.", "Dose reduction technique was used."),
        "comparison": ("None.", "No prior studies are available for comparison."),
    },
    "heldout": {
        "pos": ("{NP} is noted{where}{size}.", "Findings demonstrate {np}{where}{size}.",
                "Evidence of {np}{where}{size}."),
        "hedged": ("Probable {np}{where}{size}.", "Findings may represent {np}{where}{size}."),
        "neg": ("No evidence of {neg}.", "Negative for {neg}."),
        "normal": ("The {organ} is within normal limits.", "Unremarkable {organ}."),
        "impr_pos": ("Compatible with {np}{where}{size}.", "Consistent with {np}{where}{size}."),
        "impr_normal": ("No acute findings.",),
        "size": (" ({s})", ", approximately {s}"),
        "technique": ("Helical CT images of the {region} were acquired {contrast}.",),
        "irrelevant": ("Multiplanar reconstructions were reviewed on a workstation.",),
        "comparison": ("No comparison available.",),
    },
}
CONTRAST = {"non_contrast": ("without intravenous contrast", "without contrast"),
            "arterial": ("in the arterial phase after intravenous contrast", "during the arterial phase"),
            "portal_venous": ("in the portal venous phase after intravenous contrast",
                              "in the portal venous phase")}
# report order of organ sections
ORGAN_ORDER = ("lungs", "heart", "liver", "gallbladder", "spleen", "pancreas", "adrenal_glands", "kidneys",
               "stomach", "esophagus", "small_bowel", "colon", "aorta", "urinary_bladder", "prostate", "spine")
WHERE = {"kidneys": " in the {side} kidney", "adrenal_glands": " in the {side} adrenal gland",
         "lungs": " in the {side} lung"}
SIZED = {"liver_lesion", "renal_cyst", "renal_hypodensities", "kidney_stone", "adrenal_nodule", "hiatal_hernia",
         "lung_nodule", "gallstones", "aortic_aneurysm", "lymphadenopathy"}


@dataclass
class Report:
    text: str
    sentences: list[dict] = field(default_factory=list)
    phrasing: str = "train"


def _fmt_size(mm: float, rng) -> str:
    if mm >= 20 or rng.random() < 0.3:
        return f"{mm / 10:.1f} cm"
    return f"{int(round(mm))} mm"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _positive(rec: dict, frames: dict, rng, impression: bool = False) -> tuple[str, bool]:
    name = rec["finding"]
    np_ = str(rng.choice(LEXICON[name][0]))
    side = rec.get("laterality")
    where = ""
    if rec["organ"] in WHERE and side in ("left", "right"):
        where = WHERE[rec["organ"]].format(side=side)
    elif side == "bilateral":
        where = " bilaterally"
    size = ""
    if name in SIZED and rec.get("size_mm"):
        size = str(rng.choice(frames["size"])).format(s=_fmt_size(rec["size_mm"], rng))
    hedged = (not impression) and rec.get("severity") == "mild" and rng.random() < 0.35
    pool = frames["impr_pos"] if impression else (frames["hedged"] if hedged else frames["pos"])
    frame = str(rng.choice(pool))
    if rec.get("severity") in ("moderate", "severe") and rng.random() < 0.4 and np_.split()[0] not in ("a", "an"):
        np_ = f"{rec['severity']} {np_}"
    return _cap(frame.format(np=np_, NP=_cap(np_), where=where, size=size)), hedged


def write_report(truth: dict, rng: np.random.Generator, phrasing: str = "train") -> Report:
    if phrasing not in FRAMES:
        raise ValueError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}")
    fr = FRAMES[phrasing]
    phase = truth.get("phase")
    present = list(truth.get("findings", []))  # painted lesions and the source patient's own (``source_findings``)
    present_names = {r["finding"] for r in present}
    organs_in_scan = [o for o in ORGAN_ORDER if truth.get("organ_volumes_ml", {}).get(o, 1.0) > 0]
    sents: list[dict] = []
    lines: list[str] = []

    def add(text, section, polarity, organ=None, finding=None, phase_=None, **extra):
        sents.append({"text": text, "organ": organ, "polarity": polarity, "finding": finding, "phase": phase_,
                      "section": section, **extra})
        return text

    region = str(rng.choice(["abdomen and pelvis", "chest, abdomen and pelvis"])) if "lungs" in organs_in_scan \
        else "abdomen and pelvis"
    t = [add(str(rng.choice(fr["technique"])).format(region=region, contrast=str(rng.choice(CONTRAST[phase]))),
             "technique", "not_a_finding", phase_=phase)]
    if rng.random() < 0.6:
        t.append(add(str(rng.choice(fr["irrelevant"])), "technique", "not_a_finding"))
    lines += ["TECHNIQUE: " + " ".join(t), ""]
    lines += ["COMPARISON: " + add(str(rng.choice(fr["comparison"])), "comparison", "not_a_finding"), ""]
    lines.append("FINDINGS:")
    # some findings only in the impression (as radiologists do); always those whose organ has no section here
    impression_only = {r["finding"] for r in present if rng.random() < 0.15 or r["organ"] not in organs_in_scan}
    for organ in organs_in_scan:
        recs = [r for r in present if r["organ"] == organ]
        out = []
        for r in recs:
            if r["finding"] in impression_only:
                continue
            text, hedged = _positive(r, fr, rng)
            out.append(add(text, "findings", "positive", organ, r["finding"], hedged=hedged))
        if not recs and rng.random() < 0.85:
            disp = ORGANS_BY_NAME[organ].display.lower()
            text = _cap(str(rng.choice(fr["normal"])).format(organ=disp))
            if organ in ("lungs", "kidneys", "adrenal_glands"):  # plural organs take plural verbs
                text = text.replace(f"{disp} is ", f"{disp} are ").replace(f"{disp} appears", f"{disp} appear")
            out.append(add(text, "findings", "normal", organ))
        absent = [f.name for f in CATEGORY_FINDINGS if f.organs[0] == organ and f.name not in present_names]
        rng.shuffle(absent)
        for name in absent[: int(rng.integers(0, 3))]:
            neg = str(rng.choice(LEXICON[name][1]))
            out.append(add(_cap(str(rng.choice(fr["neg"])).format(neg=neg)), "findings", "negated", organ, name))
        if out:
            lines.append(f"{ORGANS_BY_NAME[organ].display}: " + " ".join(out))
    lines += ["", "IMPRESSION:"]
    if present:
        order = sorted(present, key=lambda r: {"severe": 0, "moderate": 1, "mild": 2}.get(r.get("severity"), 3))
        for i, r in enumerate(order, 1):
            if r["finding"] in impression_only or rng.random() < 0.7:
                text, _ = _positive(r, fr, rng, impression=True)
                lines.append(f"{i}. " + add(text, "impression", "positive", r["organ"], r["finding"]))
    else:
        lines.append(add(str(rng.choice(fr["impr_normal"])), "impression", "normal"))
    return Report("\n".join(lines) + "\n", sents, phrasing)


def template_set(phrasing: str) -> set[str]:
    """Every sentence template of a phrasing set (frames with each noun phrase filled in, slots kept)."""
    fr = FRAMES[phrasing]
    out: set[str] = set()
    for kind in ("pos", "hedged", "impr_pos"):
        for frame in fr[kind]:
            for nps, _, _ in LEXICON.values():
                for np_ in nps:
                    out.add(frame.format(np=np_, NP=_cap(np_), where="{where}", size="{size}"))
    for frame in fr["neg"]:
        for _, negs, _ in LEXICON.values():
            out |= {_cap(frame.format(neg=n)) for n in negs}
    for kind in ("normal", "technique", "irrelevant", "comparison", "impr_normal"):
        out |= set(fr[kind])
    return out
