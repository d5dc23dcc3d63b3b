"""Write side of the admin console: each action is one call to the store's or dicom_node's public functions and
returns a one-line message for the screen. Errors the admin can act on (TotalFMError) come back as messages, never
as tracebacks; the store writes the audit event together with the change."""

from __future__ import annotations

import contextlib
import io
import tomllib
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import TotalFMError
from appliance.store.reviews import mark_reviewed


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


def _do(fn, ok_message: str) -> Outcome:
    try:
        fn()
    except TotalFMError as exc:
        return Outcome(False, str(exc))
    return Outcome(True, ok_message)


def retry_job(store, job_id: int, actor: str) -> Outcome:
    return _do(lambda: store.retry_job(job_id, actor=actor), f"job {job_id} queued again")


def cancel_job(store, job_id: int, actor: str) -> Outcome:
    return _do(lambda: store.cancel_job(job_id, actor=actor), f"job {job_id} cancelled")


def reanalyse(store, study_uid: str, actor: str) -> Outcome:
    box = {}
    out = _do(lambda: box.setdefault("id", store.reanalyse_study(study_uid, actor=actor)), "")
    return out if not out.ok else Outcome(True, f"re-analysis queued as job {box['id']}")


def resend(store, delivery_id: int, actor: str) -> Outcome:
    return _do(lambda: store.resend_delivery(delivery_id, actor=actor),
               f"delivery {delivery_id} will be sent again by the node")


def review(store, analysis_id: int, actor: str) -> Outcome:
    return _do(lambda: mark_reviewed(store, analysis_id, actor=actor),
               f"draft of analysis {analysis_id} marked reviewed by {actor}")


def echo(node_config, destination: str, store=None, actor: str = "tui") -> Outcome:
    """C-ECHO through dicom_node's public echo (TLS when configured), its printed line returned as the message."""
    if node_config is None:
        return Outcome(False, "no node config loaded (start the console with --config) - destinations unknown")
    from dicom_node.cli import echo as node_echo  # noqa: PLC0415 - pynetdicom only when used
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = node_echo(destination, node_config)
    except TotalFMError as exc:
        return Outcome(False, str(exc))
    except OSError as exc:
        return Outcome(False, f"C-ECHO {destination}: {exc}")
    msg = buf.getvalue().strip().splitlines()[-1:] or [f"C-ECHO {destination}: rc {rc}"]
    if store is not None:
        with contextlib.suppress(TotalFMError):
            store.audit("echo", actor=actor, detail={"destination": destination, "ok": rc == 0})
    return Outcome(rc == 0, msg[0])


@dataclass
class ConfigView:
    path: str | None
    lines: list[str]
    errors: list[tuple[int | None, str]]  # (0-based line or None, message)


def validate_config(path: str | Path | None) -> ConfigView:
    """The site TOML, line by line, with each validation error attached to the line of the key it names."""
    if path is None:
        return ConfigView(None, [], [(None, "no config file: the console was started with --db; node and worker "
                                            "settings are not visible here")])
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        return ConfigView(str(p), [], [(None, f"cannot read {p}: {exc}")])
    lines = text.splitlines()
    errors: list[tuple[int | None, str]] = []
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        return ConfigView(str(p), lines, [((line - 1) if line else None, f"not valid TOML: {exc}")])
    from appliance.config import parse_worker_config  # noqa: PLC0415
    from dicom_node.config import parse_config  # noqa: PLC0415
    for fn in (parse_config, lambda d: parse_worker_config(d, source=str(p))):
        try:
            fn(data)
        except TotalFMError as exc:
            errors.append((_line_of(lines, str(exc)), str(exc)))
    return ConfigView(str(p), lines, errors)


def _line_of(lines: list[str], message: str) -> int | None:
    """The line whose key the message names (first match of `key =` whose key occurs in the message)."""
    import re  # noqa: PLC0415
    for i, ln in enumerate(lines):
        m = re.match(r"\s*([A-Za-z0-9_\-]+)\s*=", ln)
        if m and re.search(rf"(?<![A-Za-z0-9_]){re.escape(m.group(1))}(?![A-Za-z0-9_])", message):
            return i
    return None
