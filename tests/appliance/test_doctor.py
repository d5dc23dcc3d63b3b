"""`totalfm doctor`: every check passes on a healthy site and FAILs, with a fix, on each way it can break."""

from __future__ import annotations

import json
import shutil
import socket
from collections import namedtuple
from pathlib import Path

import pytest

from appliance.commands import doctor
from appliance.store import open_store
from appliance.store import migrate
from appliance.store.engine import make_engine

DU = namedtuple("DU", "total used free")


def _site_toml(tmp_path: Path, **over) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    keys = {"store_url": f'"sqlite:///{tmp_path}/t.db"', "spool_dir": f'"{spool}"', "port": "0",
            "min_free_bytes": "1024"}
    keys.update(over)
    worker = keys.pop("worker", 'llm_gguf = "off"')
    text = "\n".join(f"{k} = {v}" for k, v in keys.items()) + f"\n[worker]\n{worker}\n"
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def _by_name(checks):
    return {c.name: c for c in checks}


def test_healthy_site_core_checks_ok(tmp_path):
    cfg = _site_toml(tmp_path)
    open_store(f"sqlite:///{tmp_path}/t.db").close()
    check, site = doctor.check_config(cfg)
    assert check.status == "OK", check.detail
    assert doctor.check_database(site).status == "OK"
    assert doctor.check_spool(site).status == "OK"
    assert doctor.check_llm(site).status == "OK"
    assert doctor.check_port(site).status == "OK"


def test_missing_config_file_fails(tmp_path):
    check, _ = doctor.check_config(tmp_path / "nope.toml")
    assert check.status == "FAIL" and "does not exist" in check.detail and check.fix


def test_bad_toml_fails(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("port = = 3\n")
    check, _ = doctor.check_config(p)
    assert check.status == "FAIL" and "not valid TOML" in check.detail


def test_invalid_worker_key_fails_and_names_it(tmp_path):
    cfg = _site_toml(tmp_path, worker='backend = "quantum"')
    check, _ = doctor.check_config(cfg)
    assert check.status == "FAIL" and "backend" in check.detail


def test_invalid_node_key_fails_and_names_it(tmp_path):
    cfg = _site_toml(tmp_path, port='"eleven"')
    check, _ = doctor.check_config(cfg)
    assert check.status == "FAIL" and "port" in check.detail


def test_database_missing_file_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    c = doctor.check_database(site)
    assert c.status == "FAIL" and "totalfm db upgrade" in c.fix


def test_database_unreachable_folder_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path, store_url='"sqlite:////nonexistent-dir-xyz/t.db"'))
    c = doctor.check_database(site)
    assert c.status == "FAIL" and "does not exist" in c.detail


def test_database_old_schema_fails(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    engine = make_engine(url)
    migrate.upgrade(engine, "head")
    migrate.downgrade(engine, "-1")
    engine.dispose()
    _, site = doctor.check_config(_site_toml(tmp_path))
    c = doctor.check_database(site)
    assert c.status == "FAIL" and "schema at revision" in c.detail and "db upgrade" in c.fix


def test_spool_missing_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    site.spool_dir = str(tmp_path / "gone")
    c = doctor.check_spool(site)
    assert c.status == "FAIL" and "mkdir" in c.fix


def test_spool_not_writable_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    spool = Path(site.spool_dir)
    spool.chmod(0o500)
    try:
        probe = spool / "probe"
        try:
            probe.write_text("x")  # running as root: permissions do not bind, nothing to test
            probe.unlink()
            pytest.skip("running as root: directory permissions are not enforced")
        except PermissionError:
            pass
        c = doctor.check_spool(site)
        assert c.status == "FAIL" and "not writable" in c.detail
    finally:
        spool.chmod(0o700)


def test_spool_below_reserve_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path, min_free_bytes=str(10 << 30)))
    c = doctor.check_spool(site, disk_usage=lambda p: DU(100 << 30, 99 << 30, 1 << 30))
    assert c.status == "FAIL" and "below the reserve" in c.detail


def test_bundle_missing_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    site.bundle = str(tmp_path / "no-bundle")
    c = doctor.check_bundle(site)
    assert c.status == "FAIL" and "not found" in c.detail


def test_bundle_tampered_fails_and_good_passes(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from export.untrained import build_untrained_bundle
    root = Path(build_untrained_bundle(tmp_path / "bundle"))
    _, site = doctor.check_config(_site_toml(tmp_path))
    site.bundle = str(root)
    assert doctor.check_bundle(site).status == "OK"
    manifest = json.loads((root / "manifest.json").read_text())
    victim = root / sorted(manifest["files"])[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    c = doctor.check_bundle(site)
    assert c.status == "FAIL" and victim.name in c.detail


def test_backend_cuda_without_gpu_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    site.backend = "cuda"
    c = doctor.check_backend(site, providers=["CPUExecutionProvider"], gpu_probe=lambda: None)
    assert c.status == "FAIL" and "onnxruntime-gpu" in c.fix
    site.backend = "tensorrt"
    assert doctor.check_backend(site, providers=["CPUExecutionProvider"], gpu_probe=lambda: None).status == "FAIL"
    site.backend = "auto"
    c = doctor.check_backend(site, providers=["CPUExecutionProvider"], gpu_probe=lambda: None)
    assert c.status == "OK" and "CPU inference" in c.detail


def test_llm_missing_or_not_gguf_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    site.llm_gguf = str(tmp_path / "missing.gguf")
    assert doctor.check_llm(site).status == "FAIL"
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 10)
    site.llm_gguf = str(fake)
    c = doctor.check_llm(site)
    assert c.status == "FAIL" and "not a GGUF" in c.detail


def test_port_in_use_fails(tmp_path):
    _, site = doctor.check_config(_site_toml(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        site.port = s.getsockname()[1]
        c = doctor.check_port(site, node_seen=None)
        assert c.status == "FAIL" and "change port" in c.fix
        assert doctor.check_port(site, node_seen="AE TOTALFM").status == "OK"  # busy because our node runs


def test_main_exit_code_nonzero_on_fail(tmp_path, capsys):
    cfg = _site_toml(tmp_path)  # database file not created -> FAIL
    assert doctor.main(["--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] database" in out and "fix:" in out and "checks passed" in out


def test_port_held_by_a_dicom_node_answering_our_ae_is_ok(tmp_path):
    """Without a node heartbeat row, a DICOM SCP on the port that accepts our AE title is taken as our node."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    ae = AE(ae_title="TOTALFM")
    ae.add_supported_context(Verification)
    scp = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = scp.server_address[1]
        _, site = doctor.check_config(_site_toml(tmp_path, port=str(port), ae_titles='["TOTALFM"]'))
        c = doctor.check_port(site)
        assert c.status == "OK" and "answers C-ECHO as AE TOTALFM" in c.detail
    finally:
        scp.shutdown()
