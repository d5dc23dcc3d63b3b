"""Fixtures for the store and queue tests: every test runs against SQLite AND PostgreSQL.

PostgreSQL comes from TOTALFM_TEST_PG_URL (scripts/test.sh starts one) or, when unset, from a throwaway cluster that
this fixture starts with scripts/start_postgres.sh. If no server can be had: fail under CI=true, skip otherwise.
Each test gets its own fresh database.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[2]


def _no_postgres(msg: str):
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory):
    url = os.environ.get("TOTALFM_TEST_PG_URL")
    if url:
        yield url
        return
    state = tmp_path_factory.mktemp("pg") / "state"
    env = dict(os.environ, TOTALFM_PG_STATE=str(state))
    script = REPO_ROOT / "scripts" / "start_postgres.sh"
    proc = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=60)
        _no_postgres(f"could not start PostgreSQL: {proc.stderr.strip()[-500:]}")
    try:
        yield proc.stdout.strip()
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def fresh_pg_url(pg_server_url):
    """A brand-new empty database on the test server, dropped afterwards."""
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    name = f"t_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # server URL given but unusable
        admin.dispose()
        _no_postgres(f"PostgreSQL at TOTALFM_TEST_PG_URL is unusable: {exc}")
    yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("fresh_pg_url")


@pytest.fixture
def store(store_url):
    from appliance.store import open_store

    s = open_store(store_url)
    yield s
    s.close()


def add_instance(store, study_uid: str, n: int, *, series_uid: str | None = None, **extra) -> int:
    """Record `n` instances numbered after the study's existing ones; returns how many were new."""
    series_uid = series_uid or study_uid + ".1"
    new = 0
    for i in range(n):
        new += store.record_instance(
            study_uid=study_uid, series_uid=series_uid, sop_instance_uid=f"{series_uid}.{uuid.uuid4().int % 10**12}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"/spool/{study_uid}/{i}.dcm", size_bytes=1000 + i, calling_ae="CT_SCANNER", modality="CT", **extra)
    return new
