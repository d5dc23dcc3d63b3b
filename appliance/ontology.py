"""The ontology: organs, their TotalSegmentator class groups, crop recipes, and the findings catalogue.

One declarative module that every package imports (trainer, exporter, appliance, DICOM node). The bundle manifest
records ONTOLOGY_VERSION and ontology_fingerprint(); the appliance refuses a bundle built against another ontology.

Conventions (see appliance/volume.py): array axes are (z, y, x) = (slice, row, column); spacings and shapes below
are given in that order, in millimetres and voxels.

Change anything here -> bump ONTOLOGY_VERSION (the fingerprint changes by itself and catches forgotten bumps).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from appliance.errors import OntologyError

ONTOLOGY_VERSION = "1.0.0"

# TotalSegmentator v2 `total` task: class id -> name (the 117 classes; the same table as
# ../shared/data/real-ct/totalsegmentator_total_labels.json, held here so the runtime needs no data file).
TOTALSEG_TOTAL_CLASSES: dict[int, str] = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach", 7: "pancreas",
    8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right", 13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 15: "esophagus",
    16: "trachea", 17: "thyroid_gland", 18: "small_bowel", 19: "duodenum", 20: "colon", 21: "urinary_bladder",
    22: "prostate", 23: "kidney_cyst_left", 24: "kidney_cyst_right", 25: "sacrum", 26: "vertebrae_S1",
    27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3", 30: "vertebrae_L2", 31: "vertebrae_L1",
    32: "vertebrae_T12", 33: "vertebrae_T11", 34: "vertebrae_T10", 35: "vertebrae_T9", 36: "vertebrae_T8",
    37: "vertebrae_T7", 38: "vertebrae_T6", 39: "vertebrae_T5", 40: "vertebrae_T4", 41: "vertebrae_T3",
    42: "vertebrae_T2", 43: "vertebrae_T1", 44: "vertebrae_C7", 45: "vertebrae_C6", 46: "vertebrae_C5",
    47: "vertebrae_C4", 48: "vertebrae_C3", 49: "vertebrae_C2", 50: "vertebrae_C1", 51: "heart", 52: "aorta",
    53: "pulmonary_vein", 54: "brachiocephalic_trunk", 55: "subclavian_artery_right", 56: "subclavian_artery_left",
    57: "common_carotid_artery_right", 58: "common_carotid_artery_left", 59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right", 61: "atrial_appendage_left", 62: "superior_vena_cava",
    63: "inferior_vena_cava", 64: "portal_vein_and_splenic_vein", 65: "iliac_artery_left", 66: "iliac_artery_right",
    67: "iliac_vena_left", 68: "iliac_vena_right", 69: "humerus_left", 70: "humerus_right", 71: "scapula_left",
    72: "scapula_right", 73: "clavicula_left", 74: "clavicula_right", 75: "femur_left", 76: "femur_right",
    77: "hip_left", 78: "hip_right", 79: "spinal_cord", 80: "gluteus_maximus_left", 81: "gluteus_maximus_right",
    82: "gluteus_medius_left", 83: "gluteus_medius_right", 84: "gluteus_minimus_left", 85: "gluteus_minimus_right",
    86: "autochthon_left", 87: "autochthon_right", 88: "iliopsoas_left", 89: "iliopsoas_right", 90: "brain",
    91: "skull", 92: "rib_left_1", 93: "rib_left_2", 94: "rib_left_3", 95: "rib_left_4", 96: "rib_left_5",
    97: "rib_left_6", 98: "rib_left_7", 99: "rib_left_8", 100: "rib_left_9", 101: "rib_left_10",
    102: "rib_left_11", 103: "rib_left_12", 104: "rib_right_1", 105: "rib_right_2", 106: "rib_right_3",
    107: "rib_right_4", 108: "rib_right_5", 109: "rib_right_6", 110: "rib_right_7", 111: "rib_right_8",
    112: "rib_right_9", 113: "rib_right_10", 114: "rib_right_11", 115: "rib_right_12", 116: "sternum",
    117: "costal_cartilages",
}
TOTALSEG_ID_BY_NAME: dict[str, int] = {name: cid for cid, name in TOTALSEG_TOTAL_CLASSES.items()}

# HU windows (lo, hi). Why these: each keeps the densities its organ's findings live in (fat to contrast for soft
# tissue; air to fluid for lung; calcium for vessels and bone) and clips the rest.
WINDOW_SOFT_TISSUE = (-160.0, 240.0)
WINDOW_KIDNEY = (-160.0, 1000.0)  # stones are calcium dense
WINDOW_VESSEL = (-160.0, 900.0)  # contrast lumen and calcified plaque
WINDOW_LUNG = (-1000.0, 200.0)
WINDOW_BONE = (-250.0, 1250.0)


@dataclass(frozen=True)
class CropRecipe:
    """How an organ becomes a fixed-size model input. All tuples in array order (z, y, x)."""

    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    hu_window: tuple[float, float]
    margin_mm: float = 10.0
    # normalisation: clip to hu_window, then map lo..hi linearly to 0..1 (padding value 0 == window low).
    normalization: str = "window_to_unit"

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(s * n for s, n in zip(self.spacing_mm, self.shape))  # type: ignore[return-value]


@dataclass(frozen=True)
class Organ:
    name: str  # machine name, used as a key everywhere (DB rows, bundle manifest, prompts)
    display: str  # what a radiologist reads
    totalseg_classes: tuple[str, ...]  # the TotalSegmentator `total` classes whose union is this organ
    crop: CropRecipe
    # smallest plausible volume (mL) of a whole organ; below it the crop is flagged "too small / partial".
    min_volume_ml: float = 1.0
    paired: bool = False  # left/right organ (kidneys, adrenals, lungs): findings may carry laterality
    sex_specific: str | None = None  # "male" for prostate: absence is not a finding in women

    @property
    def totalseg_ids(self) -> tuple[int, ...]:
        return tuple(TOTALSEG_ID_BY_NAME[c] for c in self.totalseg_classes)


_VERTEBRAE = tuple(f"vertebrae_{v}" for v in (
    ["C1", "C2", "C3", "C4", "C5", "C6", "C7"] + [f"T{i}" for i in range(1, 13)]
    + [f"L{i}" for i in range(1, 6)] + ["S1"]
)) + ("sacrum",)

ORGANS: tuple[Organ, ...] = (
    Organ("liver", "Liver", ("liver",),
          CropRecipe((3.0, 2.0, 2.0), (64, 128, 128), WINDOW_SOFT_TISSUE), min_volume_ml=300),
    Organ("gallbladder", "Gallbladder", ("gallbladder",),
          CropRecipe((2.0, 1.5, 1.5), (48, 64, 64), WINDOW_SOFT_TISSUE), min_volume_ml=2),
    Organ("spleen", "Spleen", ("spleen",),
          CropRecipe((3.0, 1.5, 1.5), (48, 96, 96), WINDOW_SOFT_TISSUE), min_volume_ml=30),
    Organ("pancreas", "Pancreas", ("pancreas",),
          CropRecipe((3.0, 1.5, 1.5), (32, 96, 128), WINDOW_SOFT_TISSUE), min_volume_ml=10),
    Organ("kidneys", "Kidneys", ("kidney_right", "kidney_left", "kidney_cyst_right", "kidney_cyst_left"),
          CropRecipe((3.0, 2.0, 2.0), (48, 96, 160), WINDOW_KIDNEY), min_volume_ml=50, paired=True),
    Organ("adrenal_glands", "Adrenal glands", ("adrenal_gland_right", "adrenal_gland_left"),
          CropRecipe((2.0, 1.5, 1.5), (32, 64, 128), WINDOW_SOFT_TISSUE), min_volume_ml=1, paired=True),
    Organ("stomach", "Stomach", ("stomach",),
          CropRecipe((3.0, 2.0, 2.0), (48, 112, 112), WINDOW_SOFT_TISSUE), min_volume_ml=30),
    Organ("esophagus", "Esophagus", ("esophagus",),
          CropRecipe((4.0, 1.5, 1.5), (64, 48, 48), WINDOW_SOFT_TISSUE), min_volume_ml=2),
    Organ("small_bowel", "Small bowel", ("small_bowel", "duodenum"),
          CropRecipe((4.0, 3.0, 3.0), (48, 96, 96), WINDOW_SOFT_TISSUE), min_volume_ml=50),
    Organ("colon", "Colon", ("colon",),
          CropRecipe((4.0, 3.0, 3.0), (64, 96, 112), WINDOW_SOFT_TISSUE), min_volume_ml=50),
    Organ("urinary_bladder", "Urinary bladder", ("urinary_bladder",),
          CropRecipe((3.0, 1.5, 1.5), (48, 96, 96), WINDOW_SOFT_TISSUE), min_volume_ml=5),
    Organ("prostate", "Prostate", ("prostate",),
          CropRecipe((2.0, 1.0, 1.0), (32, 64, 64), WINDOW_SOFT_TISSUE), min_volume_ml=5,
          sex_specific="male"),
    Organ("aorta", "Aorta", ("aorta",),
          CropRecipe((5.0, 2.0, 2.0), (80, 64, 64), WINDOW_VESSEL), min_volume_ml=10),
    Organ("lungs", "Lungs", ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                             "lung_middle_lobe_right", "lung_lower_lobe_right"),
          CropRecipe((5.0, 3.0, 3.0), (64, 112, 128), WINDOW_LUNG), min_volume_ml=200, paired=True),
    Organ("heart", "Heart", ("heart",),
          CropRecipe((3.0, 2.0, 2.0), (48, 80, 96), WINDOW_VESSEL), min_volume_ml=100),
    Organ("spine", "Spine", _VERTEBRAE,
          CropRecipe((5.0, 2.0, 2.0), (128, 48, 48), WINDOW_BONE), min_volume_ml=20),
)
ORGANS_BY_NAME: dict[str, Organ] = {o.name: o for o in ORGANS}
ORGAN_NAMES: tuple[str, ...] = tuple(o.name for o in ORGANS)


@dataclass(frozen=True)
class Finding:
    name: str
    display: str
    organs: tuple[str, ...]  # organ crops in which the finding is scored (first = primary)
    positive_prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    # True where a CT image can show it (every catalogue finding here); the synthetic-data generator must have an
    # insertion method for each such finding (tests enumerate this).
    image_visible: bool = True
    # True for the per-organ "any abnormality" findings, which are derived, not inserted.
    any_abnormality: bool = False
    synonyms: tuple[str, ...] = field(default_factory=tuple)  # lexicon for report writing / rule-based parsing


def _f(name, display, organs, pos, neg, synonyms=()):
    return Finding(name, display, tuple(organs), tuple(pos), tuple(neg), synonyms=tuple(synonyms))


# 30 categories in the style of Merlin's zero-shot phenotypes, restricted to what our 16 organ crops can see.
# Why the departures from Merlin's list: "surgically absent gallbladder" leaves no organ crop to score, "anasarca"
# and "thrombosis" have no organ home here, "appendicitis" needs an appendix crop; they are replaced by a hypodense
# liver lesion, an adrenal nodule, bowel wall thickening and bladder wall thickening, so that every organ has at
# least one finding.
CATEGORY_FINDINGS: tuple[Finding, ...] = (
    _f("hepatic_steatosis", "Hepatic steatosis", ["liver"],
       ["hepatic steatosis", "diffuse fatty infiltration of the liver", "low attenuation of the liver consistent with steatosis"],
       ["no hepatic steatosis", "normal attenuation of the liver", "the liver has normal density"],
       ["fatty liver", "steatosis", "fatty infiltration"]),
    _f("hepatomegaly", "Hepatomegaly", ["liver"],
       ["hepatomegaly", "the liver is enlarged", "enlarged liver"],
       ["no hepatomegaly", "the liver is normal in size", "normal sized liver"],
       ["enlarged liver", "liver enlargement"]),
    _f("liver_lesion", "Hypodense liver lesion", ["liver"],
       ["hypodense liver lesion", "a low attenuation hepatic lesion", "focal liver lesion"],
       ["no focal liver lesion", "no hepatic lesion", "the liver is homogeneous without focal lesion"],
       ["hepatic cyst", "liver cyst", "hypodense hepatic lesion", "hepatic lesion"]),
    _f("biliary_dilation", "Biliary ductal dilation", ["liver", "gallbladder"],
       ["biliary ductal dilation", "dilated intrahepatic bile ducts", "intrahepatic biliary dilatation"],
       ["no biliary dilation", "the bile ducts are not dilated", "no intrahepatic biliary ductal dilatation"],
       ["biliary dilatation", "dilated bile ducts"]),
    _f("gallstones", "Gallstones", ["gallbladder"],
       ["gallstones", "cholelithiasis", "calcified stones in the gallbladder"],
       ["no gallstones", "no cholelithiasis", "the gallbladder is unremarkable without stones"],
       ["cholelithiasis", "gallbladder stones"]),
    _f("splenomegaly", "Splenomegaly", ["spleen"],
       ["splenomegaly", "the spleen is enlarged", "enlarged spleen"],
       ["no splenomegaly", "the spleen is normal in size", "normal sized spleen"],
       ["enlarged spleen", "splenic enlargement"]),
    _f("pancreatic_atrophy", "Pancreatic atrophy", ["pancreas"],
       ["pancreatic atrophy", "the pancreas is atrophic", "diffuse atrophy of the pancreas"],
       ["no pancreatic atrophy", "the pancreas is normal in size", "normal pancreatic parenchyma"],
       ["atrophic pancreas"]),
    _f("renal_cyst", "Renal cyst", ["kidneys"],
       ["renal cyst", "a simple cyst in the kidney", "fluid attenuation renal cyst"],
       ["no renal cyst", "no cystic renal lesion", "the kidneys show no cysts"],
       ["kidney cyst", "simple renal cyst"]),
    _f("renal_hypodensities", "Renal hypodensities", ["kidneys"],
       ["renal hypodensity", "hypodense renal lesion", "low attenuation lesion in the kidney"],
       ["no renal hypodensities", "no focal renal lesion", "the renal parenchyma is homogeneous"],
       ["hypodense renal lesion", "renal hypoattenuating lesion"]),
    _f("hydronephrosis", "Hydronephrosis", ["kidneys"],
       ["hydronephrosis", "dilated renal collecting system", "pelvicalyceal dilatation"],
       ["no hydronephrosis", "no dilatation of the collecting system", "the collecting systems are not dilated"],
       ["pelvicalyceal dilatation", "collecting system dilation"]),
    _f("kidney_stone", "Kidney stone", ["kidneys"],
       ["kidney stone", "nephrolithiasis", "a calcified renal calculus"],
       ["no kidney stones", "no nephrolithiasis", "no renal calculi"],
       ["nephrolithiasis", "renal calculus", "renal stone"]),
    _f("adrenal_nodule", "Adrenal nodule", ["adrenal_glands"],
       ["adrenal nodule", "adrenal mass", "a nodule of the adrenal gland"],
       ["no adrenal nodule", "the adrenal glands are normal", "no adrenal mass"],
       ["adrenal mass", "adrenal adenoma"]),
    _f("hiatal_hernia", "Hiatal hernia", ["stomach", "esophagus"],
       ["hiatal hernia", "hiatus hernia", "herniation of the stomach through the hiatus"],
       ["no hiatal hernia", "no hiatus hernia", "the gastroesophageal junction is in normal position"],
       ["hiatus hernia"]),
    _f("bowel_wall_thickening", "Bowel wall thickening", ["small_bowel", "colon"],
       ["bowel wall thickening", "thickened bowel wall", "submucosal edema of the bowel"],
       ["no bowel wall thickening", "normal bowel wall thickness", "the bowel wall is not thickened"],
       ["submucosal edema", "thickened bowel"]),
    _f("bowel_obstruction", "Bowel obstruction", ["small_bowel", "colon"],
       ["bowel obstruction", "dilated fluid filled bowel loops", "small bowel obstruction"],
       ["no bowel obstruction", "no dilated bowel loops", "normal caliber bowel"],
       ["dilated bowel loops", "ileus"]),
    _f("free_air", "Free intraperitoneal air", ["small_bowel", "colon"],
       ["free intraperitoneal air", "pneumoperitoneum", "extraluminal free air"],
       ["no free air", "no pneumoperitoneum", "no extraluminal gas"],
       ["pneumoperitoneum", "free air"]),
    _f("ascites", "Ascites", ["liver", "spleen"],
       ["ascites", "free fluid in the abdomen", "perihepatic fluid"],
       ["no ascites", "no free fluid", "no intra-abdominal fluid"],
       ["free fluid", "intraperitoneal fluid"]),
    _f("pleural_effusion", "Pleural effusion", ["lungs"],
       ["pleural effusion", "fluid in the pleural space", "layering pleural fluid"],
       ["no pleural effusion", "the pleural spaces are clear", "no pleural fluid"],
       ["pleural fluid", "hydrothorax"]),
    _f("atelectasis", "Atelectasis", ["lungs"],
       ["atelectasis", "collapse of the lung base", "dependent atelectasis"],
       ["no atelectasis", "the lungs are fully expanded", "no lung collapse"],
       ["lung collapse", "atelectatic change"]),
    _f("lung_nodule", "Lung nodule", ["lungs"],
       ["lung nodule", "pulmonary nodule", "a solid nodule in the lung"],
       ["no lung nodule", "no pulmonary nodules", "the lungs are clear without nodules"],
       ["pulmonary nodule", "lung nodule"]),
    _f("cardiomegaly", "Cardiomegaly", ["heart"],
       ["cardiomegaly", "the heart is enlarged", "enlarged cardiac silhouette"],
       ["no cardiomegaly", "the heart is normal in size", "normal heart size"],
       ["enlarged heart", "cardiac enlargement"]),
    _f("coronary_calcification", "Coronary artery calcification", ["heart"],
       ["coronary artery calcification", "calcified coronary arteries", "coronary calcifications"],
       ["no coronary artery calcification", "no coronary calcifications", "the coronary arteries are not calcified"],
       ["coronary calcifications", "calcified coronaries"]),
    _f("aortic_aneurysm", "Aortic aneurysm", ["aorta"],
       ["aortic aneurysm", "aneurysmal dilatation of the aorta", "abdominal aortic aneurysm"],
       ["no aortic aneurysm", "the aorta is normal in caliber", "normal caliber aorta"],
       ["aneurysm", "aortic dilatation"]),
    _f("atherosclerosis", "Aortic atherosclerosis", ["aorta"],
       ["atherosclerosis of the aorta", "aortic calcified plaque", "atherosclerotic calcification"],
       ["no atherosclerosis", "no aortic calcification", "the aorta has no calcified plaque"],
       ["atherosclerotic calcification", "aortic calcification", "calcified plaque"]),
    _f("lymphadenopathy", "Lymphadenopathy", ["aorta"],
       ["lymphadenopathy", "enlarged retroperitoneal lymph nodes", "para-aortic lymph node enlargement"],
       ["no lymphadenopathy", "no enlarged lymph nodes", "no pathologically enlarged nodes"],
       ["enlarged lymph nodes", "adenopathy"]),
    _f("bladder_wall_thickening", "Bladder wall thickening", ["urinary_bladder"],
       ["bladder wall thickening", "thickened urinary bladder wall", "diffuse thickening of the bladder wall"],
       ["no bladder wall thickening", "the urinary bladder is unremarkable", "normal bladder wall"],
       ["thickened bladder wall"]),
    _f("prostatomegaly", "Prostatomegaly", ["prostate"],
       ["prostatomegaly", "enlarged prostate", "the prostate is enlarged"],
       ["no prostatomegaly", "the prostate is normal in size", "normal sized prostate"],
       ["enlarged prostate", "prostatic enlargement", "prostatic hypertrophy"]),
    _f("fracture", "Vertebral fracture", ["spine"],
       ["vertebral fracture", "compression fracture of the spine", "fracture of a vertebral body"],
       ["no fracture", "no acute fracture", "the vertebral bodies are intact"],
       ["compression fracture", "fracture"]),
    _f("osteopenia", "Osteopenia", ["spine"],
       ["osteopenia", "diffuse bone demineralization", "decreased bone density"],
       ["no osteopenia", "normal bone density", "normal bone mineralization"],
       ["demineralization", "low bone density"]),
    _f("metastatic_disease", "Metastatic disease", ["liver", "lungs", "spine"],
       ["metastatic disease", "multiple metastases", "metastatic lesions"],
       ["no metastatic disease", "no evidence of metastases", "no metastatic lesions"],
       ["metastases", "metastasis", "metastatic"]),
)


def _any_abnormality(organ: Organ) -> Finding:
    d = organ.display.lower()
    return Finding(
        name=f"{organ.name}_abnormal",
        display=f"{organ.display}: any abnormality",
        organs=(organ.name,),
        positive_prompts=(f"abnormal {d}", f"there is an abnormality of the {d}", f"{d} lesion"),
        negative_prompts=(f"normal {d}", f"the {d} is unremarkable", f"no abnormality of the {d}"),
        any_abnormality=True,
    )


ANY_ABNORMALITY_FINDINGS: tuple[Finding, ...] = tuple(_any_abnormality(o) for o in ORGANS)
FINDINGS: tuple[Finding, ...] = CATEGORY_FINDINGS + ANY_ABNORMALITY_FINDINGS
FINDINGS_BY_NAME: dict[str, Finding] = {f.name: f for f in FINDINGS}


def organ(name: str) -> Organ:
    try:
        return ORGANS_BY_NAME[name]
    except KeyError:
        raise OntologyError(f"unknown organ {name!r}; known organs: {', '.join(ORGAN_NAMES)}") from None


def finding(name: str) -> Finding:
    try:
        return FINDINGS_BY_NAME[name]
    except KeyError:
        raise OntologyError(f"unknown finding {name!r}; see appliance.ontology.FINDINGS") from None


def findings_for_organ(organ_name: str, *, include_any: bool = True) -> tuple[Finding, ...]:
    organ(organ_name)  # validate
    return tuple(f for f in FINDINGS if organ_name in f.organs and (include_any or not f.any_abnormality))


def organ_label_lookup() -> dict[int, str]:
    """TotalSegmentator `total` class id -> our organ name (classes outside our organs are absent)."""
    return {cid: o.name for o in ORGANS for cid in o.totalseg_ids}


def organ_index_lut(max_class_id: int = 117):
    """numpy lookup table: TotalSegmentator class id -> 1-based organ index in ORGANS (0 = background/other).

    lut[label_map] turns a TotalSegmentator label map into our 16-organ label map in one vectorised step.
    """
    import numpy as np

    lut = np.zeros(max_class_id + 1, dtype=np.uint8)
    for i, o in enumerate(ORGANS, start=1):
        for cid in o.totalseg_ids:
            lut[cid] = i
    return lut


def as_dict() -> dict:
    """The whole ontology as plain data (for the bundle manifest and for fingerprinting)."""
    return {
        "version": ONTOLOGY_VERSION,
        "organs": [asdict(o) for o in ORGANS],
        "findings": [asdict(f) for f in FINDINGS],
    }


@lru_cache(maxsize=1)
def ontology_fingerprint() -> str:
    """sha256 of the ontology content: two components agree on the ontology iff fingerprints match."""
    blob = json.dumps(as_dict(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def check_compatible(version: str, fingerprint: str | None = None, *, what: str = "model bundle") -> None:
    """Raise OntologyError with a fix-it message when another component was built against another ontology."""
    if version != ONTOLOGY_VERSION or (fingerprint is not None and fingerprint != ontology_fingerprint()):
        raise OntologyError(
            f"the {what} was built for ontology {version} (fingerprint {str(fingerprint)[:12]}) but this "
            f"appliance uses ontology {ONTOLOGY_VERSION} (fingerprint {ontology_fingerprint()[:12]}); "
            f"re-export the {what} with this software version, or install the software version it was built for"
        )
