"""The ontology is data every component agrees on: check it is complete and self-consistent."""

import json

import numpy as np
import pytest

from appliance import ontology
from appliance.errors import OntologyError

REQUIRED_ORGANS = {
    "liver", "gallbladder", "spleen", "pancreas", "kidneys", "adrenal_glands", "stomach", "esophagus",
    "small_bowel", "colon", "urinary_bladder", "prostate", "aorta", "lungs", "heart", "spine",
}


def test_required_organs_present():
    assert REQUIRED_ORGANS <= set(ontology.ORGAN_NAMES)


def test_class_table_matches_shared_label_file(real_ct):
    shipped = {int(k): v for k, v in json.loads((real_ct / "totalsegmentator_total_labels.json").read_text()).items()}
    assert shipped == ontology.TOTALSEG_TOTAL_CLASSES


@pytest.mark.parametrize("name,must_include", [
    ("kidneys", {"kidney_left", "kidney_right", "kidney_cyst_left", "kidney_cyst_right"}),
    ("small_bowel", {"small_bowel", "duodenum"}),
    ("lungs", {"lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
               "lung_middle_lobe_right", "lung_lower_lobe_right"}),
    ("spine", {"sacrum", "vertebrae_L1", "vertebrae_T12", "vertebrae_C1", "vertebrae_S1"}),
])
def test_organ_class_groups(name, must_include):
    assert must_include <= set(ontology.organ(name).totalseg_classes)


def test_class_groups_are_disjoint_and_valid():
    seen = {}
    for o in ontology.ORGANS:
        for cid in o.totalseg_ids:
            assert cid in ontology.TOTALSEG_TOTAL_CLASSES
            assert cid not in seen, f"class {cid} in both {seen.get(cid)} and {o.name}"
            seen[cid] = o.name


def test_crop_recipes_are_sane():
    for o in ontology.ORGANS:
        r = o.crop
        assert len(r.shape) == 3 and all(n % 16 == 0 for n in r.shape), o.name  # tubelet/patch friendly
        assert all(0.5 <= s <= 6 for s in r.spacing_mm), o.name
        lo, hi = r.hu_window
        assert -1024 <= lo < hi <= 3000, o.name
        assert r.margin_mm >= 0


def test_findings_catalogue():
    cats = ontology.CATEGORY_FINDINGS
    assert len(cats) == 30
    assert len({f.name for f in ontology.FINDINGS}) == len(ontology.FINDINGS)
    for f in ontology.FINDINGS:
        assert f.organs and all(o in ontology.ORGANS_BY_NAME for o in f.organs), f.name
        assert len(f.positive_prompts) >= 3 and len(f.negative_prompts) >= 3, f.name
        assert not set(f.positive_prompts) & set(f.negative_prompts)
    # one "any abnormality" finding per organ, and every organ has at least one category finding
    assert {f.organs[0] for f in ontology.ANY_ABNORMALITY_FINDINGS} == set(ontology.ORGAN_NAMES)
    for o in ontology.ORGAN_NAMES:
        assert ontology.findings_for_organ(o, include_any=False), o


def test_merlin_style_findings_named_in_the_brief_exist():
    for name in ["hepatic_steatosis", "hepatomegaly", "splenomegaly", "gallstones", "renal_cyst",
                 "renal_hypodensities", "hydronephrosis", "kidney_stone", "pancreatic_atrophy", "ascites",
                 "pleural_effusion", "atelectasis", "lung_nodule", "cardiomegaly", "coronary_calcification",
                 "aortic_aneurysm", "atherosclerosis", "hiatal_hernia", "bowel_obstruction", "free_air", "fracture",
                 "osteopenia", "lymphadenopathy", "prostatomegaly", "biliary_dilation", "metastatic_disease"]:
        ontology.finding(name)


def test_label_lut_maps_totalseg_to_organ_index():
    lut = ontology.organ_index_lut()
    labels = np.array([0, 5, 2, 24, 19, 16, 117])  # bg, liver, kidney_right, kidney_cyst_right, duodenum, trachea, cartilage
    got = lut[labels]
    names = [None if i == 0 else ontology.ORGAN_NAMES[i - 1] for i in got]
    assert names == [None, "liver", "kidneys", "kidneys", "small_bowel", None, None]


def test_unknown_names_raise_our_error():
    with pytest.raises(OntologyError, match="unknown organ"):
        ontology.organ("appendix")
    with pytest.raises(OntologyError, match="unknown finding"):
        ontology.finding("broken heart")


def test_fingerprint_detects_version_mismatch():
    fp = ontology.ontology_fingerprint()
    assert len(fp) == 64
    ontology.check_compatible(ontology.ONTOLOGY_VERSION, fp)  # no raise
    with pytest.raises(OntologyError, match="re-export"):
        ontology.check_compatible("0.9.0", fp)
    with pytest.raises(OntologyError):
        ontology.check_compatible(ontology.ONTOLOGY_VERSION, "0" * 64)
