"""The real source patients' own findings reach the truth and the report of every real-backed study that shows them."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.synth import source_findings as sf
from trainer.synth.grid import Grid
from trainer.synth.phantom import Phantom, ts_ids

AORTA = ts_ids("aorta")[0]


def _tube(lumen_hu: float, plaque_hu: float, spacing=(2.0, 1.0, 1.0)):
    """A 20-slice aorta (radius 6 voxels, lumen ``lumen_hu``) with one wall plaque of 2x3 voxels per slice at
    ``plaque_hu`` on slices 5-14, in fat; the label covers the lumen only, as TotalSegmentator's does."""
    hu = np.full((20, 32, 32), -95.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    zz, yy, xx = np.mgrid[:20, :32, :32]
    lumen = (yy - 16) ** 2 + (xx - 16) ** 2 <= 36
    labels[lumen] = AORTA
    hu[lumen] = lumen_hu
    plaque = (zz >= 5) & (zz < 15) & (yy >= 21) & (yy < 23) & (xx >= 15) & (xx < 18)  # at the label's edge
    hu[plaque] = plaque_hu
    return hu, labels, plaque, Phantom(hu, labels, Grid.centred(hu.shape, spacing), sex="male", phase="non_contrast",
                                       age=70, kind="real-backed")


def test_wall_calcium_found_at_the_labels_edge_and_weighed_by_density():
    hu, labels, plaque, _ = _tube(lumen_hu=40.0, plaque_hu=820.0)
    mask = sf.aortic_calcium_mask(hu, labels)
    # the plaque voxels on the label and the ones just outside it are found; the lumen is not
    assert np.array_equal(mask, plaque)
    # 60 voxels of 2 mm3, each (820 - 40) / (1000 - 40) dense
    assert sf.calcium_mm3(hu, mask, 40.0, 2.0) == pytest.approx(60 * 2.0 * 780 / 960, rel=1e-6)


def test_an_arterial_lumen_is_not_calcium_and_raises_the_bar():
    hu, labels, plaque, _ = _tube(lumen_hu=320.0, plaque_hu=500.0)
    assert sf.calcium_threshold(320.0) == 570.0 and sf.calcium_threshold(40.0) == sf.CALCIUM_HU
    assert not sf.aortic_calcium_mask(hu, labels).any()  # 500 HU beside a 320 HU lumen: contrast, not calcium
    hu, labels, plaque, _ = _tube(lumen_hu=320.0, plaque_hu=900.0)
    assert np.array_equal(sf.aortic_calcium_mask(hu, labels), plaque)
    labels[:] = 0  # no aorta, nothing to find
    assert not sf.aortic_calcium_mask(hu, labels).any()


def test_source_findings_record_what_the_study_shows():
    hu, labels, plaque, ph = _tube(lumen_hu=40.0, plaque_hu=820.0)
    (rec,) = sf.source_findings(ph, plaque)
    assert rec["finding"] == "atherosclerosis" and rec["organ"] == "aorta" and rec["origin"] == "source_patient"
    assert rec["inserted"] is False and rec["details"]["count"] == 1
    assert rec["details"]["calcium_mm3"] == pytest.approx(60 * 2.0 * 780 / 960, abs=0.05)
    assert rec["bbox_voxel"] == [[5, 15], [21, 23], [15, 18]]
    assert rec["severity"] == "mild"  # 97.5 mm3: the lowest third of SEVERITY_MM3
    # a field of view that keeps two slices of the plaque: under MIN_CALCIUM_MM3, not reported
    cut = plaque.copy()
    cut[7:] = False
    assert sf.calcium_mm3(hu, cut, 40.0, 2.0) < sf.MIN_CALCIUM_MM3 and sf.source_findings(ph, cut) == []
    # the mask carried in from the source, but the study's HU there is lumen (e.g. interpolated away): weighs 0
    ph.hu = np.where(plaque, 40.0, hu).astype(np.float32)
    assert sf.source_findings(ph, plaque) == []
    assert sf.source_findings(ph, np.zeros_like(plaque)) == []


# --- on the shared real scans ---------------------------------------------------------------------------------------

try:
    from trainer.synth import realbacked as rb
    DATA = str(rb.resolve_data_dir(None))
except Exception:  # the shared data folder is not on this machine
    DATA = None
needs_data = pytest.mark.skipif(DATA is None, reason="shared real CT data not available")


@needs_data
def test_patient_b_has_marked_aortic_calcium_and_the_upper_slab_of_a_none():
    def total(name):
        ct, seg, _ = rb.load_source(DATA, name)
        hu = np.asarray(ct.array, np.float32)
        mask = rb.source_calcium(DATA, name).astype(bool)
        return sf.calcium_mm3(hu, mask, sf.lumen_hu(hu, np.isin(seg, ts_ids("aorta"))), float(np.prod(ct.spacing)))

    b = total("ts_dicom_series")
    assert 600 < b < 1200, b  # session 18: 865 mm3 in 772 voxels, plaques along all 20 slices
    assert total("ts_upper_abdomen") == 0.0
    assert 20 < total("ts_abdomen_pelvis") < 150  # a few dense foci in the distal aorta (67 mm3)


@needs_data
def test_a_real_backed_study_of_b_carries_its_atherosclerosis_into_truth_report_and_labels():
    from trainer.pairs.build import _truth_labels
    from trainer.synth.study import generate_study

    st = generate_study("real-backed", 7, 0, source="B", findings=[])
    (rec,) = st.truth["findings"]
    assert rec["finding"] == "atherosclerosis" and rec["origin"] == "source_patient"
    assert st.truth["normal"] is False and st.truth["not_inserted"] == []
    said = [s for s in st.truth["sentences"] if s["polarity"] == "positive"]
    assert said and {s["finding"] for s in said} == {"atherosclerosis"}
    labels = _truth_labels(st.truth)
    assert labels["aorta"] == {"abnormal": True, "findings": ["atherosclerosis"], "source": "truth"}
    again = generate_study("real-backed", 7, 0, source="B", findings=["atherosclerosis"])
    (one,) = again.truth["findings"]  # painted on top of B's own: one record, the painted one
    assert one["inserted"] is True and "origin" not in one
