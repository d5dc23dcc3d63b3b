"""`totalfm node [--config FILE]` runs the SCP (plus study assembly and the SR/SEG sender) in the foreground;
`totalfm node echo DEST` C-ECHOes a peer (TLS when configured); `totalfm node send` runs one delivery round."""
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
    """C-ECHO a destination, over TLS when it is listed in tls_destinations (as the result sender would reach it)."""
    from pynetdicom.sop_class import Verification
    from dicom_node.delivery import associate
    assoc, where = associate(config, dest, [Verification])
    if not assoc.is_established:
        print(f"C-ECHO {where}: association failed (rejected, aborted or unreachable)")
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    print(f"C-ECHO {where}: " + ("success" if code == 0 else f"failed (status {code})"))
    return 0 if code == 0 else 1


def send_once(config: NodeConfig) -> int:
    """One delivery round (plan, build, send due SR/SEG); what the node's sender thread does every few seconds."""
    from appliance.store import open_store
    from dicom_node.delivery import ResultSender
    stats = ResultSender(config, open_store(config.store_url)).run_once()
    print(f"deliveries: {stats.planned} planned, {stats.sent} sent, {stats.failed} failed (will retry)")
    return 0 if stats.failed == 0 else 1


def run_node(config: NodeConfig) -> int:
    from appliance.store import open_store
    from dicom_node.assembly import AssemblyThread
    from dicom_node.scp import StorageNode
    store = open_store(config.store_url)
    node = StorageNode(config, store)
    node.start()
    print(f"listening port {node.port}", flush=True)
    stop = threading.Event()
    assembly = AssemblyThread(store, config.quiet_seconds, config.assembly_poll_seconds)
    assembly.start()
    sender = None
    if config.send_results and config.destinations:
        from dicom_node.delivery import SenderThread
        sender = SenderThread(config, store)
        sender.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Heartbeat into the shared database so the TUI and `totalfm doctor` see the node (and its load) without
    # talking DICOM to it; a beat with 0 associations on the way out says it stopped cleanly.
    port = node.port  # node.port is gone once the server stops; the last beat still needs it

    def beat(active: int) -> None:
        try:
            store.node_heartbeat(ae_title=config.ae_titles[0], host=config.bind_address, port=port,
                                 active_associations=active)
        except Exception:  # the database being briefly unavailable must not stop the node
            logging.getLogger("totalfm.node").warning("node heartbeat failed; retrying", exc_info=True)
    beat(0)
    while not stop.wait(min(5.0, config.assembly_poll_seconds * 5)):
        beat(node.active_associations())
    logging.getLogger("totalfm.node").info("shutting down: no new associations, finishing in-flight ones")
    node.stop()
    beat(0)
    assembly.stop()
    if sender is not None:
        sender.stop()
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="totalfm node", description=__doc__)
    p.add_argument("--config", help="node TOML config file (defaults used when omitted)")
    p.add_argument("action", nargs="?", choices=["run", "echo", "send"], default="run")
    p.add_argument("dest", nargs="?", help="for echo: configured destination name or AE@host:port")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config) if args.config else NodeConfig()
        if args.action == "echo":
            if not args.dest:
                p.error("echo needs DEST (a configured destination name or AE@host:port)")
            return echo(args.dest, config)
        if args.action == "send":
            return send_once(config)
        return run_node(config)
    except TotalFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
