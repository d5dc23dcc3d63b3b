"""`totalfm query "text"`: the bundle's text encoder ranks the organs stored by earlier analyses (same bundle only)."""

import json

from appliance.cli import main
from tests.appliance.pipeline_support import dicom_series, untrained_bundle  # noqa: F401


def test_query_after_analyze(untrained_bundle, dicom_series, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'q.db'}"
    assert main(["query", "gallstones", "--bundle", str(untrained_bundle), "--db", db]) == 0
    assert "no stored organ embeddings" in capsys.readouterr().out
    assert main(["analyze", str(dicom_series), "--bundle", str(untrained_bundle), "--db", db, "--llm", "off",
                 "--json", "--results", str(tmp_path / "r")]) == 0
    analysed = json.loads(capsys.readouterr().out)
    assert main(["query", "enlarged spleen", "--bundle", str(untrained_bundle), "--db", db, "--top", "3",
                 "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert 1 <= len(hits) <= 3 and all(h["study_uid"] == analysed["study_uid"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    organ = hits[0]["organ"]
    assert main(["query", "lesion", "--organ", organ, "--bundle", str(untrained_bundle), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "1 hit(s)" in out and organ in out and "not a diagnosis" in out
