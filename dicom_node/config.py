"""Node configuration: one TOML file, validated at start-up so a typo fails loudly with the key and the fix."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from appliance.errors import TotalFMError


class NodeConfigError(TotalFMError):
    """The node's TOML configuration is wrong; the message names the key and how to fix it."""


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    ae_titles: tuple[str, ...] = ("TOTALFM",)
    bind_address: str = "127.0.0.1"
    port: int = 11112
    spool_dir: str = "spool"
    store_url: str = "sqlite:///totalfm.db"
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    max_pdu: int = 0  # 0 = unlimited, as pynetdicom
    allowed_calling_aes: tuple[str, ...] = ()  # empty = anyone may connect
    allowed_hosts: dict = dataclasses.field(default_factory=dict)  # calling AE -> required peer IP
    accept_other_sop_classes: bool = False  # True: accept and ignore (status success, nothing stored)
    min_free_bytes: int = 1 << 30
    max_disk_usage_percent: float = 95.0
    quiet_seconds: float = 10.0
    assembly_poll_seconds: float = 1.0
    tcp_nodelay: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    destinations: dict = dataclasses.field(default_factory=dict)  # name -> "AE@host:port"
    # Results back to PACS (SR + SEG for every analysis, to every destination); see docs/results/dicom.md.
    send_results: bool = True
    results_dir: str = ""  # where the SR/SEG files are written before sending; "" = <spool_dir>/results
    delivery_poll_seconds: float = 2.0
    delivery_retry_base_seconds: float = 60.0  # backoff doubles per failed attempt, capped at 6 h
    delivery_max_attempts: int = 10
    delivery_max_age_hours: float = 72.0  # only analyses this recent are planned for sending (0 = all)
    tls_destinations: tuple[str, ...] = ()  # destination names reached over TLS (C-STORE and echo)
    tls_ca_file: str | None = None  # CA bundle that signs those destinations' certificates (else the system store)


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
# Tables of the same site file that other components own (appliance/config.py reads [worker]); the node skips them.
FOREIGN_TABLES = ("worker",)


def _check_ae(key: str, ae: object) -> str:
    if not isinstance(ae, str) or not (1 <= len(ae.strip()) <= 16) or "\\" in ae:
        raise NodeConfigError(f"{key}: AE title {ae!r} must be 1-16 characters without backslash")
    return ae.strip()


def parse_config(data: dict) -> NodeConfig:
    data = {k: v for k, v in data.items() if k not in FOREIGN_TABLES}
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise NodeConfigError(f"unknown key(s) {unknown} in node config; allowed keys: {sorted(_FIELDS)}")
    values: dict = {}
    for key, raw in data.items():
        default = _FIELDS[key].default
        if key == "tls_destinations":
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                raise NodeConfigError(f"{key} must be a list of destination names, e.g. {key} = [\"pacs\"]")
            values[key] = tuple(raw)
        elif key in ("ae_titles", "allowed_calling_aes"):
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list):
                raise NodeConfigError(f"{key} must be a list of AE titles, e.g. {key} = [\"TOTALFM\"]")
            values[key] = tuple(_check_ae(key, a) for a in raw)
        elif key in ("allowed_hosts", "destinations"):
            if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
                raise NodeConfigError(f"[{key}] must be a table of strings")
            values[key] = dict(raw)
        elif key in ("tls_cert", "tls_key", "tls_ca_file"):
            if not isinstance(raw, str) or not Path(raw).is_file():
                raise NodeConfigError(f"{key} = {raw!r}: file not found; give the path of the PEM file")
            values[key] = raw
        elif isinstance(default, bool):
            if not isinstance(raw, bool):
                raise NodeConfigError(f"{key} must be true or false, got {raw!r}")
            values[key] = raw
        elif isinstance(default, (int, float)):
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
                raise NodeConfigError(f"{key} must be a non-negative number, got {raw!r}")
            if isinstance(default, int) and not isinstance(default, bool) and not isinstance(raw, int):
                raise NodeConfigError(f"{key} must be a whole number, got {raw!r}")
            values[key] = raw
        else:
            if not isinstance(raw, str) or not raw:
                raise NodeConfigError(f"{key} must be a non-empty string, got {raw!r}")
            values[key] = raw
    cfg = NodeConfig(**values)
    if not cfg.ae_titles:
        raise NodeConfigError("ae_titles is empty; give at least one AE title this node answers to")
    if not 0 <= cfg.port <= 65535:
        raise NodeConfigError(f"port {cfg.port} is out of range 0-65535")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise NodeConfigError("tls_cert and tls_key must be given together (or neither)")
    unknown_tls = sorted(set(cfg.tls_destinations) - set(cfg.destinations))
    if unknown_tls:
        raise NodeConfigError(f"tls_destinations names {unknown_tls} that are not in [destinations] "
                              f"({sorted(cfg.destinations)})")
    if cfg.delivery_max_attempts < 1:
        raise NodeConfigError("delivery_max_attempts must be at least 1")
    if not 0 < cfg.max_disk_usage_percent <= 100:
        raise NodeConfigError("max_disk_usage_percent must be in (0, 100]")
    return cfg


def load_config(path: str | Path) -> NodeConfig:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise NodeConfigError(f"node config file {path} not found; pass --config with an existing TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError(f"node config file {path} is not valid TOML: {exc}") from None
    return parse_config(data)


def results_dir(config: NodeConfig) -> Path:
    return Path(config.results_dir) if config.results_dir else Path(config.spool_dir) / "results"
