"""The pair dataset's SQLite index: schema and the one transaction that commits a finished study.

Why SQLite: one file, transactional (a study is either fully in the index or not at all), queryable by anyone with
Python's stdlib. Only the parent process writes; workers return plain dicts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY, path TEXT NOT NULL, patient TEXT, kind TEXT, seed INTEGER, split TEXT,
    status TEXT NOT NULL,            -- ok | unusable | duplicate
    reason TEXT NOT NULL DEFAULT '', image_hash TEXT, duplicate_of TEXT, segmenter TEXT, engine TEXT,
    n_crops INTEGER NOT NULL DEFAULT 0, n_sentences INTEGER NOT NULL DEFAULT 0, n_pairs INTEGER NOT NULL DEFAULT 0,
    disagreements TEXT, notes TEXT, truth TEXT, npz TEXT, run_id INTEGER, seconds REAL);
CREATE INDEX IF NOT EXISTS studies_hash ON studies(image_hash);
CREATE TABLE IF NOT EXISTS crops (
    crop_id INTEGER PRIMARY KEY, study_key TEXT NOT NULL REFERENCES studies(study_key), organ TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', volume_ml REAL, voxel_count INTEGER,
    shape TEXT, spacing TEXT, stored INTEGER NOT NULL DEFAULT 0, UNIQUE(study_key, organ));
CREATE INDEX IF NOT EXISTS crops_organ ON crops(organ, status);
CREATE TABLE IF NOT EXISTS sentences (
    sentence_id INTEGER PRIMARY KEY, study_key TEXT NOT NULL REFERENCES studies(study_key), idx INTEGER NOT NULL,
    text TEXT NOT NULL, section TEXT, organ TEXT, polarity TEXT NOT NULL, finding TEXT, phase TEXT,
    hedged INTEGER NOT NULL DEFAULT 0, synthetic INTEGER NOT NULL DEFAULT 0, engine TEXT, disagreements TEXT,
    UNIQUE(study_key, idx));
CREATE INDEX IF NOT EXISTS sentences_q ON sentences(organ, polarity, finding);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id INTEGER PRIMARY KEY, crop_id INTEGER NOT NULL REFERENCES crops(crop_id),
    sentence_id INTEGER NOT NULL REFERENCES sentences(sentence_id),
    kind TEXT NOT NULL,              -- positive | normal
    UNIQUE(crop_id, sentence_id));
CREATE TABLE IF NOT EXISTS labels (
    study_key TEXT NOT NULL REFERENCES studies(study_key), organ TEXT NOT NULL, abnormal INTEGER NOT NULL,
    findings TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY(study_key, organ));
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, args TEXT, summary TEXT);
CREATE TABLE IF NOT EXISTS log (
    log_id INTEGER PRIMARY KEY, run_id INTEGER, ts REAL NOT NULL, study_key TEXT, level TEXT NOT NULL,
    message TEXT NOT NULL);
"""


def connect(path: str | Path, *, create: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if not create and not path.exists():
        raise FileNotFoundError(f"no pair index at {path}; build one with `totalfm train build-pairs`")
    con = sqlite3.connect(str(path), timeout=30.0)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # a committed study survives a power cut, not just a kill
    con.execute("PRAGMA foreign_keys=ON")
    if create:
        con.executescript(SCHEMA)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        con.commit()
    return con


def done_keys(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT study_key FROM studies")}


def start_run(con: sqlite3.Connection, args: dict) -> int:
    cur = con.execute("INSERT INTO runs(started, args) VALUES (?, ?)", (time.time(), json.dumps(args, sort_keys=True)))
    con.commit()
    return int(cur.lastrowid)


def finish_run(con: sqlite3.Connection, run_id: int, summary: dict) -> None:
    con.execute("UPDATE runs SET finished=?, summary=? WHERE run_id=?",
                (time.time(), json.dumps(summary, sort_keys=True), run_id))
    con.commit()


def log_event(con: sqlite3.Connection, run_id: int | None, study_key: str | None, level: str, message: str,
              *, commit: bool = True) -> None:
    con.execute("INSERT INTO log(run_id, ts, study_key, level, message) VALUES (?,?,?,?,?)",
                (run_id, time.time(), study_key, level, message))
    if commit:
        con.commit()


def commit_study(con: sqlite3.Connection, rec: dict, run_id: int) -> None:
    """Write one processed study (the dict made by build.process_study) in a single transaction."""
    s = rec["study"]
    with con:  # BEGIN ... COMMIT, or ROLLBACK on error
        con.execute(
            "INSERT INTO studies(study_key, path, patient, kind, seed, split, status, reason, image_hash, duplicate_of,"
            " segmenter, engine, n_crops, n_sentences, n_pairs, disagreements, notes, truth, npz, run_id, seconds)"
            " VALUES (:study_key,:path,:patient,:kind,:seed,:split,:status,:reason,:image_hash,:duplicate_of,"
            ":segmenter,:engine,:n_crops,:n_sentences,:n_pairs,:disagreements,:notes,:truth,:npz,:run_id,:seconds)",
            {**s, "run_id": run_id})
        crop_ids = {}
        for c in rec.get("crops", []):
            cur = con.execute(
                "INSERT INTO crops(study_key, organ, status, reason, volume_ml, voxel_count, shape, spacing, stored)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (s["study_key"], c["organ"], c["status"], c["reason"], c["volume_ml"], c["voxel_count"],
                 json.dumps(c["shape"]), json.dumps(c["spacing"]), int(c["stored"])))
            crop_ids[c["organ"]] = cur.lastrowid
        sent_ids = {}
        for t in rec.get("sentences", []):
            cur = con.execute(
                "INSERT INTO sentences(study_key, idx, text, section, organ, polarity, finding, phase, hedged, synthetic,"
                " engine, disagreements) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (s["study_key"], t["idx"], t["text"], t["section"], t["organ"], t["polarity"], t["finding"],
                 t["phase"], int(t["hedged"]), int(t["synthetic"]), t["engine"], t["disagreements"]))
            sent_ids[t["idx"]] = cur.lastrowid
        for organ, idx, kind in rec.get("pairs", []):
            con.execute("INSERT OR IGNORE INTO pairs(crop_id, sentence_id, kind) VALUES (?,?,?)",
                        (crop_ids[organ], sent_ids[idx], kind))
        for organ, lab in rec.get("labels", {}).items():
            con.execute("INSERT INTO labels(study_key, organ, abnormal, findings, source) VALUES (?,?,?,?,?)",
                        (s["study_key"], organ, int(lab["abnormal"]), json.dumps(lab["findings"]), lab["source"]))
        for level, msg in rec.get("log", []):
            con.execute("INSERT INTO log(run_id, ts, study_key, level, message) VALUES (?,?,?,?,?)",
                        (run_id, time.time(), s["study_key"], level, msg))
