"""`totalfm train eval` end to end on a tiny real checkpoint and in-process synthetic val/test studies."""
import json

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def test_eval_cli_writes_reports_and_thresholds(tmp_path):
    from trainer.evaluate.cli import main
    from trainer.model import checkpoint as ckptmod
    from trainer.model.text_tower import TextTower
    from trainer.model.vit3d import OrganEncoder, ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(input_shape=(8, 16, 16), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=32)
    ck = ckptmod.base_meta(cfg, stage="contrastive")
    ck["encoder"] = OrganEncoder(cfg).state_dict()
    tower = TextTower(embed_dim=32, freeze_layers=-1)
    ck["text"] = {"config": tower.config(), "state_dict": tower.state_dict()}
    ck["logit_scale"] = 14.3
    path = ckptmod.save(tmp_path / "run" / "final.pt", ck)

    out = tmp_path / "eval"
    assert main(["--checkpoint", str(path), "--synth-val", "2", "--synth-test", "2", "--out", str(out),
                 "--bootstrap", "20", "--threads", "1"]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["n_studies"] == {"val": 2, "test": 2}
    assert len(res["findings"]) == 46 and res["checkpoint"] == str(path)
    assert (out / "eval.md").read_text().count("| liver") >= 1
    back = ckptmod.read(path)
    assert set(back["thresholds"]) == set(res["findings"])
    assert back["metrics"]["organ_thresholds"]
