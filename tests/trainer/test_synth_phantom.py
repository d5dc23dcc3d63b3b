"""Phantoms: reproducible from the seed, labels on the anatomy (HU inside labels in range), after deformation too."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.ontology import TOTALSEG_ID_BY_NAME as TS
from trainer.synth.phantom import ts_ids
from trainer.synth.study import generate_study

SHAPE = (64, 96, 96)


def _mean(study, *names):
    m = np.isin(study.labels.array, ts_ids(*names))
    assert m.sum() > 0, f"{names} missing"
    return float(study.phantom.hu[m].mean())


def test_same_seed_gives_byte_identical_arrays_and_other_seeds_differ():
    a = generate_study("analytic", 42, 3, shape=SHAPE)
    b = generate_study("analytic", 42, 3, shape=SHAPE)
    c = generate_study("analytic", 42, 4, shape=SHAPE)
    assert a.image.array.tobytes() == b.image.array.tobytes()
    assert a.labels.array.tobytes() == b.labels.array.tobytes()
    assert a.report.text == b.report.text and a.truth["findings"] == b.truth["findings"]
    assert not np.array_equal(a.image.array, c.image.array)


def test_analytic_phantom_has_the_totalsegmentator_anatomy():
    s = generate_study("analytic", 1, 0, shape=SHAPE, findings=[])
    present = set(np.unique(s.labels.array).tolist())
    want = ["liver", "spleen", "kidney_left", "kidney_right", "gallbladder", "pancreas", "stomach", "colon",
            "small_bowel", "duodenum", "urinary_bladder", "aorta", "heart", "lung_upper_lobe_left",
            "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
            "vertebrae_L1", "vertebrae_T12", "rib_left_6", "rib_right_6", "esophagus", "adrenal_gland_left"]
    assert [n for n in want if TS[n] not in present] == []
    assert s.image.array.dtype == np.int16 and s.labels.array.dtype == np.uint8
    # left organs lie at +x (LPS), right at -x: the geometry convention holds
    for left, right in (("kidney_left", "kidney_right"), ("spleen", "liver")):
        xl = s.labels.index_to_lps(np.argwhere(s.labels.array == TS[left]).mean(axis=0))[0]
        xr = s.labels.index_to_lps(np.argwhere(s.labels.array == TS[right]).mean(axis=0))[0]
        assert xl > 0 > xr


@pytest.mark.parametrize("phase,liver,aorta", [("non_contrast", (40, 75), (25, 60)),
                                                ("portal_venous", (90, 130), (130, 200))])
def test_analytic_hu_inside_labels_match_phase(phase, liver, aorta):
    for seed in range(40):  # find a study of this phase
        s = generate_study("analytic", seed, 0, shape=SHAPE, findings=[])
        if s.truth["phase"] == phase:
            break
    assert liver[0] < _mean(s, "liver") < liver[1]
    assert aorta[0] < _mean(s, "aorta") < aorta[1]
    assert _mean(s, "lungs") < -600
    assert _mean(s, "spine") > 150


def test_real_backed_labels_stay_on_anatomy_after_deformation(shared_data):
    lungs_seen = 0
    for i in range(4):
        s = generate_study("real-backed", 9, i, findings=[], data_dir=shared_data, source="ts_abdomen_pelvis")
        liver = _mean(s, "liver")
        lo, hi = {"non_contrast": (25, 75), "arterial": (40, 110), "portal_venous": (60, 150)}[s.truth["phase"]]
        assert lo < liver < hi, (i, s.truth["phase"], liver)
        if s.truth["organ_volumes_ml"]["lungs"] > 5:  # a field-of-view crop may leave the lung bases out
            lungs_seen += 1
            assert _mean(s, "lungs") < -600
        assert _mean(s, "spine") > 150
        # the deformation really deformed: not the source grid
        assert s.image.shape != (112, 101, 122) or s.image.spacing != (3.0, 3.0, 3.0)
    assert lungs_seen >= 1


def test_real_backed_studies_differ_and_reproduce(shared_data):
    a = generate_study("real-backed", 9, 0, data_dir=shared_data)
    b = generate_study("real-backed", 9, 0, data_dir=shared_data)
    c = generate_study("real-backed", 9, 1, data_dir=shared_data)
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.labels.array, b.labels.array)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image.array, c.image.array)
