"""`totalfm node [--config FILE]` runs the SCP in the foreground; `totalfm node echo DEST` C-ECHOes a peer."""
from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading

from appliance.errors import TotalFMError
from dicom_node.config import NodeConfig, NodeConfigError, load_config

_DEST = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def parse_destination(dest: str, config: NodeConfig) -> tuple[str, str, int]:
    spec = config.destinations.get(dest, dest)
    m = _DEST.match(spec)
    if not m:
        raise NodeConfigError(f"destination {dest!r} is neither a configured destination name "
                              f"({sorted(config.destinations)}) nor AE@host:port")
    return m["ae"], m["host"], int(m["port"])


def echo(dest: str, config: NodeConfig) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    ae_title, host, port = parse_destination(dest, config)
    ae = AE(ae_title=config.ae_titles[0])
    ae.acse_timeout = ae.network_timeout = min(config.acse_timeout, 30)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        print(f"C-ECHO {ae_title}@{host}:{port}: association failed (rejected, aborted or unreachable)")
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    print(f"C-ECHO {ae_title}@{host}:{port}: " + ("success" if code == 0 else f"failed (status {code})"))
    return 0 if code == 0 else 1


def run_node(config: NodeConfig) -> int:
    from appliance.store import open_store
    from dicom_node.assembly import AssemblyThread
    from dicom_node.scp import StorageNode
    store = open_store(config.store_url)
    node = StorageNode(config, store)
    node.start()
    print(f"listening port {node.port}", flush=True)
    assembly = AssemblyThread(store, config.quiet_seconds, config.assembly_poll_seconds)
    assembly.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logging.getLogger("totalfm.node").info("shutting down: no new associations, finishing in-flight ones")
    node.stop()
    assembly.stop()
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="totalfm node", description=__doc__)
    p.add_argument("--config", help="node TOML config file (defaults used when omitted)")
    p.add_argument("action", nargs="?", choices=["run", "echo"], default="run")
    p.add_argument("dest", nargs="?", help="for echo: configured destination name or AE@host:port")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else NodeConfig()
        if args.action == "echo":
            if not args.dest:
                p.error("echo needs DEST (a configured destination name or AE@host:port)")
            return echo(args.dest, config)
        return run_node(config)
    except TotalFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
