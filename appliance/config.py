"""Worker configuration: the ``[worker]`` table of the site TOML, plus the top-level ``store_url`` and ``spool_dir``.

One site file serves the DICOM node (flat top-level keys, dicom_node/config.py) and the workers (this table), so an
admin edits one file. Validated at start-up; every error names the key and says how to fix it.

    store_url = "sqlite:////var/lib/totalfm/totalfm.db"   # or postgresql+psycopg://user@host/db
    spool_dir = "/var/lib/totalfm/spool"

    [worker]
    bundle = "/opt/totalfm/bundles/current"   # default: $TOTALFM_BUNDLE, else the bundle inside the package
    backend = "auto"                          # auto | cpu | cuda | tensorrt
    llm_gguf = "default"                      # "default" (bundled SmolLM2 / $TOTALFM_LLM_GGUF), "off", or a .gguf path
    threads = 0                               # 0 = all CPUs this process may use (cgroup-aware)
    results_dir = "/var/lib/totalfm/results"  # label maps for the SEG; default <spool_dir>/../results
    worker_id = ""                            # default host:pid
    lease_seconds = 120
    poll_seconds = 2.0
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from appliance.backends import BACKENDS
from appliance.errors import TotalFMError


class ConfigError(TotalFMError):
    """The site configuration is wrong; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    store_url: str = "sqlite:///var/totalfm.db"
    spool_dir: str = "spool"
    bundle: str | None = None  # None = appliance.bundle.default_bundle_path()
    backend: str = "auto"
    llm_gguf: str = "default"  # "default" | "off" | path
    threads: int = 0
    results_dir: str = ""
    worker_id: str = ""
    lease_seconds: float = 120.0
    poll_seconds: float = 2.0
    source: str = ""  # file the config came from (for messages)

    @property
    def llm_enabled(self) -> bool:
        return self.llm_gguf != "off"

    @property
    def llm_path(self) -> str | None:
        return None if self.llm_gguf in ("default", "off") else self.llm_gguf

    def results_path(self) -> Path:
        if self.results_dir:
            return Path(self.results_dir)
        return Path(self.spool_dir).expanduser().resolve().parent / "results"


_WORKER_KEYS = {f.name for f in dataclasses.fields(WorkerConfig)} - {"store_url", "spool_dir", "source"}


def _typed(key: str, value, types, example: str):
    if isinstance(value, bool) or not isinstance(value, types):
        raise ConfigError(f"[worker] {key} = {value!r} has the wrong type; write e.g. {key} = {example}")
    return value


def parse_worker_config(data: dict, *, source: str = "") -> WorkerConfig:
    """Validate a parsed site TOML (dict) and return the worker's view of it."""
    where = f" in {source}" if source else ""
    values: dict = {"source": source}
    for key in ("store_url", "spool_dir"):
        if key in data:
            if not isinstance(data[key], str) or not data[key].strip():
                raise ConfigError(f"{key}{where} must be a non-empty string, e.g. {key} = \"...\"")
            values[key] = data[key]
    table = data.get("worker", {})
    if not isinstance(table, dict):
        raise ConfigError(f"'worker'{where} must be a table: write [worker] on its own line and the keys below it")
    unknown = sorted(set(table) - _WORKER_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [worker]{where}; allowed keys: {sorted(_WORKER_KEYS)}")
    for key, raw in table.items():
        if key in ("bundle", "results_dir", "worker_id", "llm_gguf"):
            values[key] = _typed(key, raw, str, '"..."')
        elif key == "backend":
            if raw not in BACKENDS:
                raise ConfigError(f"[worker] backend = {raw!r}{where} is not one of {list(BACKENDS)}; "
                                  f"use \"auto\" unless you must force one")
            values[key] = raw
        elif key == "threads":
            v = _typed(key, raw, int, "0  (0 = all CPUs available)")
            if v < 0:
                raise ConfigError(f"[worker] threads = {v}{where} must be >= 0 (0 = all CPUs available)")
            values[key] = v
        elif key in ("lease_seconds", "poll_seconds"):
            v = float(_typed(key, raw, (int, float), "60"))
            if v <= 0:
                raise ConfigError(f"[worker] {key} = {raw}{where} must be > 0 seconds")
            values[key] = v
    if values.get("bundle"):
        p = Path(values["bundle"]).expanduser()
        if not p.exists():
            raise ConfigError(f"[worker] bundle = {values['bundle']!r}{where}: no such directory; point it at a "
                              f"model bundle (the folder holding manifest.json) or remove the key for the default")
    llm = values.get("llm_gguf", "default")
    if llm not in ("default", "off"):
        p = Path(llm).expanduser()
        if not p.is_file() or p.suffix != ".gguf":
            raise ConfigError(f"[worker] llm_gguf = {llm!r}{where}: not an existing .gguf file; give a GGUF model "
                              f"path, \"default\" (bundled SmolLM2) or \"off\" (template drafts only)")
    return WorkerConfig(**values)


def load_worker_config(path: str | Path) -> WorkerConfig:
    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; pass --config with the site TOML "
                          f"(e.g. /etc/totalfm/totalfm.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return parse_worker_config(data, source=str(p))
