"""The pipeline end to end with the untrained plumbing bundle (random networks: this proves the wiring, shapes,
geometry, storage and timings - never accuracy)."""

import numpy as np
import pytest

from appliance import ontology
from appliance.report_draft import DISCLAIMER
from tests.appliance.pipeline_support import dicom_series, pipeline, untrained_bundle  # noqa: F401 - fixtures

STAGES = ("load", "segment", "crop", "encode", "score", "measure", "report", "write", "total")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    pytest.importorskip("torch")
    from trainer.synth.study import generate_study
    from appliance.nifti_io import write_nifti

    st = generate_study("analytic", seed=2000, index=0, findings=["splenomegaly"])
    d = tmp_path_factory.mktemp("synth")
    write_nifti(st.image, d / "ct.nii.gz")
    return st, d / "ct.nii.gz"


def _check(out, volume_shape, bundle):
    r = out.result
    assert set(STAGES) <= set(r.timings) and r.timings["peak_rss_mb"] > 0
    assert [o.organ for o in r.organs] == list(ontology.ORGAN_NAMES)
    encoded = {o.organ for o in r.organs if o.embedding is not None}
    assert encoded == set(out.embeddings)
    for o in r.organs:
        if o.embedding is not None:
            assert abs(np.linalg.norm(o.embedding) - 1) < 1e-4
    # every finding of every encoded organ is scored; positive exactly when score >= threshold
    expected = {f.name for f in bundle.findings if set(getattr(f, "organs", None) or [f.organ]) & encoded}
    assert {f.finding for f in r.findings} == expected
    for f in r.findings:
        assert 0.0 <= f.score <= 1.0 and f.positive == (f.score >= f.threshold)
    assert r.report.draft_text.startswith(DISCLAIMER) and r.report.draft_text.rstrip().endswith(DISCLAIMER)
    assert r.report.model_ids["bundle_id"] == r.bundle_id
    # the label map artifact: organ label space, exactly on the analysed grid
    from appliance.nifti_io import read_nifti
    lab = read_nifti(r.artifacts["labels"])
    assert lab.shape == volume_shape and out.volume.same_grid(lab, tol_mm=1e-3)
    assert lab.array.max() <= len(ontology.ORGANS)
    assert r.backend == "onnxruntime-cpu"


def test_pipeline_on_a_synthetic_study(pipeline, synthetic, tmp_path):
    st, path = synthetic
    out = pipeline.analyse(path, out_dir=tmp_path / "res")
    _check(out, st.image.shape, pipeline.bundle)


def test_pipeline_on_the_shared_dicom_series(pipeline, dicom_series, tmp_path):
    out = pipeline.analyse(dicom_series, out_dir=tmp_path / "res")
    assert out.volume.shape == (20, 512, 512)
    _check(out, (20, 512, 512), pipeline.bundle)
    # measurements come from the label map on the source grid: volume = voxels x voxel volume
    for o in out.result.organs:
        m = out.measurements.get(o.organ)
        assert (m is None) == (o.volume_ml is None)


def test_results_are_stored_in_sqlite_and_postgresql(store, pipeline, dicom_series, tmp_path):
    from appliance.worker_service import analyse_and_store

    job, out = analyse_and_store(store, pipeline, dicom_series, tmp_path / "results")
    aid, version, stored = store.latest_analysis(job.study_uid)
    assert version == job.analysis_version == 1
    assert [(o.organ, o.status) for o in stored.organs] == [(o.organ, o.status) for o in out.result.organs]
    assert len(stored.findings) == len(out.result.findings)
    assert stored.report.draft_text == out.result.report.draft_text
    assert stored.artifacts["labels"].endswith("v1/labels.nii.gz") and stored.series_uid
    for a, b in zip(stored.organs, out.result.organs):
        if b.embedding is not None:
            np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=0)
    # the same input again is a new version of the same study, never a duplicate study
    job2, _ = analyse_and_store(store, pipeline, dicom_series, tmp_path / "results")
    assert job2.study_uid == job.study_uid and job2.analysis_version == 2


def test_query_ranks_stored_organs_of_the_same_bundle(store, pipeline, dicom_series, tmp_path):
    from appliance.store.search import search_organs
    from appliance.text import TextEncoder
    from appliance.worker_service import analyse_and_store

    job, out = analyse_and_store(store, pipeline, dicom_series, tmp_path / "results")
    q = TextEncoder.from_bundle(pipeline.bundle).encode_texts(["pancreatic atrophy"])[0]
    hits = search_organs(store, q, bundle_id=pipeline.bundle.bundle_id, top=50)
    assert len(hits) == len(out.embeddings) and hits == sorted(hits, key=lambda h: -h.score)
    want = {n: float(e @ q) for n, e in out.embeddings.items()}
    for h in hits:
        assert h.study_uid == job.study_uid and h.score == pytest.approx(want[h.organ], abs=1e-5)
    assert search_organs(store, q, bundle_id="another-bundle") == []
    one = search_organs(store, q, bundle_id=pipeline.bundle.bundle_id, organ=hits[0].organ)
    assert [h.organ for h in one] == [hits[0].organ]
