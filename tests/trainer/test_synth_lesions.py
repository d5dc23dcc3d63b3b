"""Lesion insertion: every catalogue finding has a method; lesions change HU where (and only where) the truth says;
enlargement grows organs by the recorded factor; findings without their organ are skipped and recorded."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.ontology import CATEGORY_FINDINGS
from trainer.synth.lesions import INSERTERS
from trainer.synth.study import generate_study

SHAPE = (64, 96, 96)  # (z, y, x): cheap, whole torso at ~4 x 4 x 7 mm
SEED = 11


@pytest.fixture(scope="module")
def base():
    return generate_study("analytic", SEED, 0, shape=SHAPE, findings=[])


def test_every_catalogue_finding_has_an_insertion_method():
    missing = [f.name for f in CATEGORY_FINDINGS if f.image_visible and f.name not in INSERTERS]
    assert not missing, f"no insertion method for {missing}"
    assert set(INSERTERS) <= {f.name for f in CATEGORY_FINDINGS}


def test_base_is_reproducible_and_lesion_free(base):
    again = generate_study("analytic", SEED, 0, shape=SHAPE, findings=[])
    assert np.array_equal(base.image.array, again.image.array)
    assert base.truth["findings"] == [] and base.truth["normal"]


# expected direction of the HU change at the recorded location (None: structural change, checked elsewhere)
DIRECTION = {"liver_lesion": -1, "renal_cyst": -1, "renal_hypodensities": -1, "kidney_stone": +1, "gallstones": +1,
             "lung_nodule": +1, "hepatic_steatosis": -1, "hydronephrosis": -1, "biliary_dilation": -1}


@pytest.mark.parametrize("name", [f.name for f in CATEGORY_FINDINGS])
def test_lesion_changes_hu_only_inside_its_recorded_box(base, name):
    s = generate_study("analytic", SEED, 0, shape=SHAPE, findings=[name])
    if name == "prostatomegaly" and s.truth["sex"] != "male":
        assert s.truth["not_inserted"][0]["reason"].startswith("no prostate")
        assert np.array_equal(s.image.array, base.image.array)
        return
    assert len(s.truth["findings"]) == 1, s.truth["not_inserted"]
    rec = s.truth["findings"][0]
    changed = (s.image.array != base.image.array) | (s.labels.array != base.labels.array)
    assert changed.any(), f"{name}: nothing changed"
    box = np.zeros_like(changed)
    box[tuple(slice(a, b) for a, b in rec["bbox_voxel"])] = True
    assert not (changed & ~box).any(), f"{name}: {int((changed & ~box).sum())} voxels changed outside its box"
    for key in ("organ", "location_lps_mm", "location_voxel", "size_mm", "severity", "laterality"):
        assert key in rec
    if name in DIRECTION:
        # noise-free phantoms: the HU at the recorded centre moved the expected way
        k = tuple(int(round(v)) for v in rec["location_voxel"])
        delta = float(s.phantom.hu[k] - base.phantom.hu[k])
        assert np.sign(delta) == DIRECTION[name], f"{name}: HU change {delta:+.0f} at its centre"


@pytest.mark.parametrize("name,organ,tol", [("splenomegaly", "spleen", 0.05), ("hepatomegaly", "liver", 0.05),
                                            ("cardiomegaly", "heart", 0.05), ("pancreatic_atrophy", "pancreas", 0.3)])
def test_enlarged_organs_grow_by_the_recorded_factor(name, organ, tol):
    # Tolerance: labels are relabelled by nearest neighbour, so the boundary moves by up to half a voxel, unbiased;
    # for organs above ~150 mL at these 4-7 mm voxels that measured <= 1.5 % (18 trials); the pancreas is a thin
    # 2 cm tube only 2-3 voxels across at this size: nearest-neighbour resampling adds or drops up to one boundary
    # layer, i.e. up to ~30 % of its voxels (measured 11-23 %); it must still clearly shrink.
    for seed in (1, 2):
        b = generate_study("analytic", seed, 0, shape=SHAPE, findings=[])
        s = generate_study("analytic", seed, 0, shape=SHAPE, findings=[name])
        factor = s.truth["findings"][0]["details"]["volume_factor"]
        measured = s.phantom.volume_ml(organ) / b.phantom.volume_ml(organ)
        assert abs(measured / factor - 1) < tol, (seed, factor, measured)
        assert (measured > 1.05) if factor > 1 else (measured < 0.95)


def test_missing_organ_is_skipped_and_recorded(shared_data):
    # the upper-abdomen slab has no pelvis: no bladder, no prostate
    s = generate_study("real-backed", 3, 0, findings=["bladder_wall_thickening", "prostatomegaly", "liver_lesion"],
                       data_dir=shared_data, source="ts_upper_abdomen")
    skipped = {r["finding"]: r["reason"] for r in s.truth["not_inserted"]}
    assert set(skipped) == {"bladder_wall_thickening", "prostatomegaly"}
    assert "not in the scan" in skipped["bladder_wall_thickening"]
    assert [r["finding"] for r in s.truth["findings"]] == ["liver_lesion"]
    assert all(r["finding"] != "bladder_wall_thickening" or r["polarity"] != "positive" for r in s.truth["sentences"])


def test_real_backed_lesion_stays_in_its_box(shared_data):
    b = generate_study("real-backed", 5, 2, findings=[], data_dir=shared_data, source="ts_abdomen_pelvis")
    s = generate_study("real-backed", 5, 2, findings=["renal_cyst"], data_dir=shared_data, source="ts_abdomen_pelvis")
    rec = s.truth["findings"][0]
    changed = s.image.array != b.image.array
    box = np.zeros_like(changed)
    box[tuple(slice(a, b_) for a, b_ in rec["bbox_voxel"])] = True
    assert changed.any() and not (changed & ~box).any()
    # the cyst is relabelled as TotalSegmentator's kidney_cyst class of its side
    cyst_id = 23 if rec["laterality"] == "left" else 24
    assert (s.labels.array == cyst_id).sum() > 0 and (b.labels.array == cyst_id).sum() == 0


def test_a_finding_that_gives_up_half_way_leaves_no_trace(base, monkeypatch):
    from trainer.synth import lesions

    def half_then_skip(ph, rng):
        ph.hu[10:20, 10:20, 10:20] += 500  # a first lesion written...
        raise lesions.Skip("no room for the second lesion")  # ...then the finding gives up

    monkeypatch.setitem(lesions.INSERTERS, "liver_lesion", half_then_skip)
    s = generate_study("analytic", SEED, 0, shape=SHAPE, findings=["liver_lesion"])
    assert s.truth["findings"] == [] and s.truth["not_inserted"][0]["reason"] == "no room for the second lesion"
    assert np.array_equal(s.image.array, base.image.array)
    assert not any(x["polarity"] == "positive" for x in s.truth["sentences"])
