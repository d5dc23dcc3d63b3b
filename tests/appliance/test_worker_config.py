"""The [worker] table of the site TOML: defaults, validation errors that name the key, the node keys tolerated."""

import pytest

from appliance.config import ConfigError, load_worker_config, parse_worker_config


def test_defaults_and_top_level_keys(tmp_path):
    c = parse_worker_config({"store_url": "sqlite:///x.db", "spool_dir": str(tmp_path / "spool"), "port": 104,
                             "ae_titles": ["TOTALFM"]})
    assert c.store_url == "sqlite:///x.db" and c.backend == "auto" and c.llm_enabled and c.llm_path is None
    assert c.results_path() == tmp_path / "results"


@pytest.mark.parametrize("table, match", [
    ({"backend": "gpu"}, r"\[worker\] backend = 'gpu'"),
    ({"threads": -1}, r"\[worker\] threads = -1"),
    ({"threads": "4"}, r"\[worker\] threads = '4' has the wrong type"),
    ({"bundel": "/x"}, r"unknown key\(s\) \['bundel'\]"),
    ({"bundle": "/does/not/exist"}, r"\[worker\] bundle = '/does/not/exist'.*no such directory"),
    ({"llm_gguf": "/nope.gguf"}, r"\[worker\] llm_gguf = '/nope.gguf'.*\"off\""),
    ({"lease_seconds": 0}, r"lease_seconds = 0 .*must be > 0"),
])
def test_errors_name_the_key(table, match):
    with pytest.raises(ConfigError, match=match):
        parse_worker_config({"worker": table})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_worker_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_worker_config(bad)
    good = tmp_path / "ok.toml"
    good.write_text(f'store_url = "sqlite:///a.db"\n[worker]\nllm_gguf = "off"\nthreads = 2\nbackend = "cpu"\n'
                    f'results_dir = "{tmp_path}"\n')
    c = load_worker_config(good)
    assert (c.threads, c.backend, c.llm_enabled, c.source) == (2, "cpu", False, str(good))


def test_node_config_and_worker_config_share_one_file(tmp_path):
    import tomllib
    from dicom_node.config import parse_config

    text = ('ae_titles = ["TOTALFM"]\nport = 11112\nspool_dir = "spool"\nstore_url = "sqlite:///t.db"\n'
            '[worker]\nbackend = "cpu"\n')
    data = tomllib.loads(text)
    assert parse_config(dict(data)).port == 11112
    assert parse_worker_config(data).backend == "cpu"
