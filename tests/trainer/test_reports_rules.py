"""The rule engine: negation scope, normal statements, hedging, organ words incl. adjectives, cue words, phase."""

import pytest

from trainer.reports.labels import Sentence
from trainer.reports.rules import label_sentence, negation_scopes


def lab(text, section="findings"):
    return label_sentence(text, section).key()


@pytest.mark.parametrize("text, expected", [
    ("No splenomegaly.", ("spleen", "negated", "splenomegaly", None)),
    ("There is no evidence of hydronephrosis.", ("kidneys", "negated", "hydronephrosis", None)),
    ("Negative for pulmonary nodules.", ("lungs", "negated", "lung_nodule", None)),
    ("The abdomen is free of ascites.", ("liver", "negated", "ascites", None)),
    ("The spleen is not enlarged.", ("spleen", "negated", "splenomegaly", None)),
    ("The previously seen pleural effusion has resolved.", ("lungs", "negated", "pleural_effusion", None)),
    ("Pneumoperitoneum is not seen.", ("small_bowel", "negated", "free_air", None)),
    ("No ascites, pleural effusion or lymphadenopathy.", ("liver", "negated", "ascites", None)),
])
def test_negation_triggers_before_and_after(text, expected):
    assert lab(text) == expected


@pytest.mark.parametrize("text, expected", [
    # the scope ends at "but": the stone after it is positive and wins the sentence
    ("No hydronephrosis, but a 4 mm stone in the left kidney.", ("kidneys", "positive", "kidney_stone", None)),
    ("No free air; however, there is ascites.", ("liver", "positive", "ascites", None)),
    # "without" negates what follows it only
    ("Cholelithiasis without gallbladder wall thickening.", ("gallbladder", "positive", "gallstones", None)),
    ("Colonic diverticulosis without diverticulitis.", ("colon", "positive", None, None)),
    # pseudo-negations are not negations
    ("No change in the size of the hepatic cyst.", ("liver", "positive", "liver_lesion", None)),
    ("The gallbladder is surgically absent.", ("gallbladder", "positive", None, None)),
])
def test_negation_scope_ends_and_pseudo_triggers(text, expected):
    assert lab(text) == expected


def test_negation_scope_ranges():
    text = "no ascites but a large renal cyst"
    (start, end), = negation_scopes(text)
    assert text[start:end].strip() == "ascites"


@pytest.mark.parametrize("text, expected", [
    ("The liver is unremarkable.", ("liver", "normal", None, None)),
    ("Unremarkable adrenal glands.", ("adrenal_glands", "normal", None, None)),
    ("The liver is normal in size.", ("liver", "normal", "hepatomegaly", None)),
    ("Heart size is normal.", ("heart", "normal", "cardiomegaly", None)),
    ("The aorta is normal in caliber.", ("aorta", "normal", "aortic_aneurysm", None)),
    ("The pleural spaces are clear.", ("lungs", "normal", "pleural_effusion", None)),
    ("No acute abnormality.", (None, "normal", None, None)),
])
def test_normal_statements(text, expected):
    assert lab(text) == expected


@pytest.mark.parametrize("text, finding", [
    ("Small hypodense lesion in the liver, likely a cyst.", "liver_lesion"),
    ("Cannot exclude a small renal calculus.", "kidney_stone"),
    ("Possible small left adrenal nodule.", "adrenal_nodule"),
    ("Findings suspicious for hepatic metastases.", "metastatic_disease"),
])
def test_hedged_statements_are_positive_and_flagged(text, finding):
    got = label_sentence(text, "findings")
    assert (got.polarity, got.finding, got.hedged) == ("positive", finding, True)


def test_unlikely_is_a_negation():
    got = label_sentence("Metastatic disease is unlikely.", "impression")
    assert (got.polarity, got.finding) == ("negated", "metastatic_disease")


@pytest.mark.parametrize("text, organ, finding", [
    ("Hepatic steatosis.", "liver", "hepatic_steatosis"),
    ("Splenic enlargement.", "spleen", "splenomegaly"),
    ("Bilateral renal cysts.", "kidneys", "renal_cyst"),
    ("Hepatic cyst.", "liver", "liver_lesion"),
    ("A 5 mm pulmonary nodule.", "lungs", "lung_nodule"),
    ("Coronary artery calcifications.", "heart", "coronary_calcification"),
    ("Calcified plaque of the abdominal aorta.", "aorta", "atherosclerosis"),
    ("Multiple calcified gallstones.", "gallbladder", "gallstones"),
    ("Circumferential thickening of the sigmoid colon wall.", "colon", "bowel_wall_thickening"),
    ("Dilated fluid-filled small bowel loops.", "small_bowel", "bowel_obstruction"),
    ("Compression fracture of L1.", "spine", "fracture"),
    ("Enlarged retroperitoneal lymph nodes.", "aorta", "lymphadenopathy"),
    ("Pericardial effusion.", "heart", None),
    ("Gall bladder sludge.", "gallbladder", None),
])
def test_organ_words_adjectives_and_context_cues(text, organ, finding):
    got = label_sentence(text, "findings")
    assert (got.organ, got.polarity, got.finding) == (organ, "positive", finding)


def test_coordinated_organ_names_the_finding():
    assert lab("No pleural or pericardial effusion.") == ("lungs", "negated", "pleural_effusion", None)


def test_subheading_supplies_the_organ():
    s = Sentence("No focal lesion.", "findings", 0, 0, heading="LIVER")
    assert label_sentence(s).key() == ("liver", "negated", "liver_lesion", None)
    assert label_sentence("No focal lesion.", "findings").organ is None


@pytest.mark.parametrize("text, section", [
    ("Rule out kidney stones.", "indication"),
    ("CT of the abdomen in the portal venous phase.", "technique"),
    ("Prior CT of the liver.", "comparison"),
    ("Follow-up CT of the lung nodule in 6 months is recommended.", "impression"),
    ("Images reviewed on a workstation.", "findings"),
])
def test_not_a_finding(text, section):
    got = label_sentence(text, section)
    assert got.polarity == "not_a_finding" and got.organ is None and got.finding is None


@pytest.mark.parametrize("text, phase", [
    ("CT abdomen without intravenous contrast.", "non_contrast"),
    ("Unenhanced CT of the kidneys.", "non_contrast"),
    ("Late arterial phase images of the liver.", "arterial"),
    ("Arterial and portal venous phases were acquired.", "arterial"),
    ("Imaging in the portal-venous phase.", "portal_venous"),
    ("The liver is normal.", None),
])
def test_phase(text, phase):
    assert label_sentence(text, "technique").phase == phase
