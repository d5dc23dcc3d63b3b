"""TLS: the node serves DICOM over TLS with a self-signed certificate made by openssl in the test."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

from tests.dicom_node.conftest import db_rows, make_study, scu


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_store_over_tls_and_plain_client_fails(node_factory, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    node = node_factory(tls_cert=str(cert), tls_key=str(key))
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae = scu()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM", tls_args=(client_ctx, "127.0.0.1"))
    assert assoc.is_established
    assert [assoc.send_c_store(d).Status for d in make_study(2)] == [0, 0]
    assoc.release()
    assert db_rows(node.db_path, "select count(*) from instances")[0][0] == 2
    ae.acse_timeout = ae.network_timeout = 3
    plain = ae.associate("127.0.0.1", node.port, ae_title="TOTALFM")
    assert not plain.is_established


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_echo_and_result_send_to_tls_destination(tmp_path, capsys):
    """`totalfm node echo DEST` and the SR/SEG sender reach a destination listed in tls_destinations over TLS."""
    from dicom_node.cli import echo
    from dicom_node.config import parse_config
    from dicom_node.delivery import send_file
    from tests.dicom_node.results_fixtures import StandInPACS
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert), str(key))
    pacs = StandInPACS(ssl_context=server_ctx)
    try:
        dest = f"PACS@127.0.0.1:{pacs.port}"
        cfg = parse_config({"destinations": {"secure": dest, "plain": dest}, "tls_destinations": ["secure"],
                            "tls_ca_file": str(cert), "acse_timeout": 3.0, "network_timeout": 3.0})
        assert echo("secure", cfg) == 0 and "success" in capsys.readouterr().out
        assert echo("plain", cfg) == 1  # the TLS peer does not speak plain DICOM
        ds = make_study(1)[0]
        f = tmp_path / "x.dcm"
        ds.save_as(f, enforce_file_format=True)
        send_file(cfg, "secure", f)
        assert [r.SOPInstanceUID for r in pacs.received] == [ds.SOPInstanceUID]
    finally:
        pacs.stop()
