"""Refusal paths of two exporter/evaluator commands: they stop with a message that names the fix and leave nothing
half-written behind."""
import pytest


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    from export.untrained import build_untrained_bundle
    return build_untrained_bundle(tmp_path_factory.mktemp("r") / "b")


def test_slim_refuses_a_bundle_without_a_gated_int8_text_encoder(untrained, tmp_path):
    from export.slim import slim_bundle
    out = tmp_path / "slim"
    with pytest.raises(SystemExit, match="no INT8 text encoder.*totalfm export int8"):
        slim_bundle(untrained, out, log=lambda *_: None)
    assert not out.exists()  # the copy made before the check is removed again


def test_eval_on_a_bundle_refuses_prompts_it_has_no_embedding_for(untrained):
    from appliance import ontology
    from trainer.evaluate.cli import bundle_encoders
    _, embed_texts, _, _ = bundle_encoders(untrained, threads=1)
    known = [p for f in ontology.FINDINGS for p in f.positive_prompts][:3]
    assert embed_texts(known).shape[0] == 3  # the ontology it was exported from: stored rows come back
    with pytest.raises(SystemExit, match="no stored embedding for 1 prompt.*another ontology"):
        embed_texts(known + ["a prompt from a newer ontology"])
