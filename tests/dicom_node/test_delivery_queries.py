"""delivery_queries over a real SQLite store: plan once per (latest analysis, destination, kind), the analysed series'
files, and the result of a given (possibly superseded) version."""
from __future__ import annotations

from appliance.store import open_store
from appliance.store.delivery_queries import (analysis_result, analysis_source, delivery_states, missing_deliveries,
                                              plan_deliveries)
from appliance.store.results import AnalysisResult, OrganResult


def _study(store, study_uid, series_counts):
    for k, n in enumerate(series_counts):
        for i in range(n):
            store.record_instance(study_uid=study_uid, series_uid=f"{study_uid}.{k + 1}",
                                  sop_instance_uid=f"{study_uid}.{k + 1}.{i + 1}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                  transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"/spool/{k}/{i}.dcm", size_bytes=1,
                                  calling_ae="S")


def _analyse(store, study_uid, volume_ml, series_uid=None):
    store.enqueue_analysis(study_uid, reason="test")
    job = store.claim_job("w")
    store.complete_job(job.id, "w", AnalysisResult([OrganResult("liver", "ok", volume_ml, 50.0, 10.0)],
                                                   series_uid=series_uid))
    return store.latest_analysis(study_uid)[0]


def test_plan_latest_versions_once_per_destination_and_kind(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    _study(store, "1.2.3", [3, 5])
    _study(store, "1.2.4", [2])
    a1 = _analyse(store, "1.2.3", 1000.0)
    a2 = _analyse(store, "1.2.3", 1100.0)  # a reanalysis supersedes version 1
    b1 = _analyse(store, "1.2.4", 900.0, series_uid="1.2.4.1")
    assert missing_deliveries(store, ["p1", "p2"]) == [(a2, "p1", "SR"), (a2, "p1", "SEG"), (a2, "p2", "SR"),
                                                      (a2, "p2", "SEG"), (b1, "p1", "SR"), (b1, "p1", "SEG"),
                                                      (b1, "p2", "SR"), (b1, "p2", "SEG")]
    assert len(plan_deliveries(store, ["p1", "p2"])) == 8
    assert plan_deliveries(store, ["p1", "p2"]) == []  # planned once
    assert len(plan_deliveries(store, ["p1", "p2", "p3"])) == 4  # a new destination gets the latest results
    assert {d["analysis_id"] for d in delivery_states(store)} == {a2, b1}
    import datetime as dt
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    assert plan_deliveries(store, ["p4"], since=future) == []  # too old for the age limit: not planned
    # no series recorded: the study's largest series; recorded: that series
    src = analysis_source(store, a2)
    assert src.series_uid == "1.2.3.2" and len(src.instance_paths) == 5 and src.study_uid == "1.2.3"
    assert analysis_source(store, b1).series_uid == "1.2.4.1"
    assert analysis_result(store, a1).organs[0].volume_ml == 1000.0
    assert analysis_result(store, a2).organs[0].volume_ml == 1100.0
    assert analysis_result(store, 999) is None
