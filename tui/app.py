"""The admin console (Textual): Dashboard, Studies (+ study detail), Jobs, Config, Audit.

Keyboard-first: 1-5 (or d s j c a) switch screens, Enter opens a study, Esc goes back, q quits; each screen's own
actions are listed in the footer. Every screen refreshes itself on a timer (set_interval) from the same SQL database
the node and workers write, so it shows live state while they run as separate processes.

`now` and `disk_usage` are injectable so that snapshot tests render the same text every run.
"""

from __future__ import annotations

import datetime as dt
import getpass
import shutil
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from appliance.scoring import never_called
from appliance.store.models import utcnow
from tui import actions, queries

DRAFT_LABEL = "AI draft for radiologist review - not a diagnosis"


def _gib(n: int) -> str:
    g = n / (1 << 30)
    return f"{g:.0f} GiB" if g >= 10 else f"{g:.1f} GiB"


def _num(v, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _spark(values: list[int]) -> str:
    """Studies per hour as block characters (one per hour, oldest first); empty hours are a low dot."""
    blocks = "▁▂▃▄▅▆▇█"
    top = max(values) if values else 0
    return "".join("·" if v == 0 else blocks[min(7, (v * 8 - 1) // top)] for v in values)


def _short_uid(uid: str, n: int = 24) -> str:
    return uid if len(uid) <= n else "…" + uid[-(n - 1):]


class Confirm(ModalScreen[bool]):
    """y / Enter = yes, n / Esc = no: for actions that stop work or cost compute."""
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("enter", "answer(True)", "Yes", show=False),
                Binding("n", "answer(False)", "No"), Binding("escape", "answer(False)", "No", show=False)]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.question}\n\n[y] yes   [n] no"), id="confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class Base(Screen):
    """A screen that reloads its data now and every `app.refresh_seconds`."""

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(self.app.refresh_seconds, self.reload)

    def reload(self) -> None:  # pragma: no cover - overridden
        pass

    def confirm_then(self, question: str, do: Callable[[], actions.Outcome]) -> None:
        def done(yes: bool | None) -> None:
            if yes:
                self.tell(do())
            else:
                self.tell(actions.Outcome(True, "nothing done"))
        self.app.push_screen(Confirm(question), done)

    def tell(self, outcome: actions.Outcome) -> None:
        self.app.last_message = outcome.message
        self.notify(outcome.message, severity="information" if outcome.ok else "error",
                    timeout=6 if outcome.ok else 12)
        self.reload()


def _fill(table: DataTable, rows: list[tuple], keys: list[str]) -> None:
    """Replace a table's rows and keep the cursor on the same row index (live refresh must not jump)."""
    row = table.cursor_row
    table.clear()
    for r, k in zip(rows, keys):
        table.add_row(*r, key=k)
    if rows:
        table.move_cursor(row=min(max(row, 0), len(rows) - 1))


# --- Dashboard ------------------------------------------------------------------------------------------------------

class DashboardScreen(Base):
    TITLE = "Dashboard"

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(id="dash")
        yield Footer()

    def reload(self) -> None:
        app = self.app
        d = queries.dashboard(app.store, now=app.now(), disk=app.disk())
        t = Text()
        t.append("Node   ", style="bold")
        if not d["nodes"]:
            cfg = app.node_config
            if cfg is not None:
                t.append(f"{'/'.join(cfg.ae_titles)} {cfg.bind_address}:{cfg.port}  ", style="bold")
            t.append("no heartbeat in the database\n", style="red")
            t.append("       ")
        for n in d["nodes"]:
            t.append(f"{n['ae']} {n['host']}:{n['port']}  ", style="bold")
            t.append("up" if n["alive"] else "DOWN", style="green" if n["alive"] else "bold red")
            t.append(f"  assoc {n['active']}  seen {n['seen']} ago\n")
            t.append("       ")
        t.append(f"last image {d['last_received']}" + (" ago" if d["last_received"] != "never" else "")
                 + f"; last assoc. {d['last_association']}\n")
        t.append("Workers", style="bold")
        if not d["workers"]:
            t.append(" none registered (start totalfm-worker@1)\n", style="red")
        else:
            t.append("\n")
        for w in d["workers"]:
            state = "busy" if w["job"] else "idle"
            t.append(f"  {w['id'][:28]:<28} ")
            t.append(f"{state if w['alive'] else 'LOST':<5}", style="green" if w["alive"] else "bold red")
            t.append(f" job {w['job'] or '-':<5} beat {w['seen']} ago\n")
        q = d["queue"]
        t.append("Queue  ", style="bold")
        t.append(f"pending {q['pending']}  running {q['running']}  ")
        t.append(f"failed {q['failed']}", style="bold red" if q["failed"] else "")
        t.append(f"  done {q['done']}  cancelled {q['cancelled']}\n")
        t.append("Studies", style="bold")
        t.append(f" {d['studies_last_hour']} in the last hour; 24 h: {d['studies_last_24h']} in, "
                 f"{d['analyses_last_24h']} analysed\n")
        t.append("       24 h ")
        t.append(_spark(d["hourly"]), style="cyan")
        t.append(" now\n")
        dl = d["deliveries"]
        t.append("Sends  ", style="bold")
        t.append(f"pending {dl['pending']}  ")
        t.append(f"failed {dl['failed']}\n", style="bold red" if dl["failed"] else "")
        disk = d["disk"]
        t.append("Disk   ", style="bold")
        if not disk["known"]:
            t.append(disk["why"] + "\n", style="yellow")
        else:
            width = 12
            filled = int(round(width * disk["percent"] / 100))
            mark = int(round(width * disk["watermark_percent"] / 100))
            bar = "".join("█" if i < filled else ("|" if i == mark else "░") for i in range(width))
            t.append(bar, style="red" if disk["over"] else "green")
            t.append(f" {disk['percent']:.0f}% used, {_gib(disk['free'])} free; "
                     f"watermark {disk['watermark_percent']:.0f}%, reserve {_gib(disk['min_free_bytes'])}\n")
            if disk["over"]:
                t.append("       over the watermark: the node refuses new images\n", style="bold red")
        t.append("Model  ", style="bold")
        t.append(f"bundle {d['bundle']}  backend {d['backend']}\n")
        t.append("LLM    ", style="bold")
        t.append(f"{d['llm']}\n")
        t.append(f"\nAll AI output is an {DRAFT_LABEL}.", style="italic yellow")
        self.query_one("#dash", Static).update(t)


# --- Studies --------------------------------------------------------------------------------------------------------

class StudiesScreen(Base):
    TITLE = "Studies"
    BINDINGS = [Binding("slash", "search", "Search"), Binding("enter", "open", "Open", show=True),
                Binding("escape", "to_list", "List", show=False)]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="search: study UID, accession, date (Enter = go to list)", id="search")
        yield DataTable(id="studies", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("Study UID", "Acc.", "Date", "Img", "Job", "Ver", "Pos", "Reviewed")
        super().on_mount()
        self.query_one(DataTable).focus()

    def reload(self) -> None:
        text = self.query_one("#search", Input).value
        rows = queries.studies(self.app.store, text)
        _fill(self.query_one(DataTable),
              [(_short_uid(r["study_uid"]), r["accession"], r["date"], str(r["instances"]), r["job"],
                _num(r["version"]), _num(r["positives"]), r["reviewed"] or "-") for r in rows],
              [r["study_uid"] for r in rows])

    def on_input_changed(self, event: Input.Changed) -> None:
        self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_to_list(self) -> None:
        self.query_one(DataTable).focus()

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(StudyDetailScreen(event.row_key.value))

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
            self.app.push_screen(StudyDetailScreen(key.value))


class StudyDetailScreen(Base):
    TITLE = "Study"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "reanalyse", "Re-analyse"),
        Binding("v", "review", "Mark reviewed"),
        Binding("e", "resend", "Resend"),
        Binding("o", "echo", "C-ECHO dest"),
    ]

    def __init__(self, study_uid: str):
        super().__init__()
        self.study_uid = study_uid
        self.detail: dict | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="detail"):
            yield Static(id="head")
            yield Static("Findings (score vs threshold)", classes="section")
            yield DataTable(id="findings", cursor_type="row", show_cursor=False)
            yield Static(id="draft")
            yield Static("Organs", classes="section")
            yield DataTable(id="organs", cursor_type="row", show_cursor=False)
            yield Static("Versions", classes="section")
            yield Static(id="versions")
            yield Static("Deliveries (select, then e = resend, o = C-ECHO)", classes="section")
            yield DataTable(id="deliveries", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#organs", DataTable).add_columns("Organ", "Status", "mL", "HU mean", "HU sd")
        self.query_one("#findings", DataTable).add_columns("Finding", "Organ", "Score", "Thr", "Call")
        self.query_one("#deliveries", DataTable).add_columns("Id", "Ver", "Destination", "Kind", "State", "Tries",
                                                             "Sent / error")
        super().on_mount()

    def reload(self) -> None:
        d = self.detail = queries.study_detail(self.app.store, self.study_uid)
        head = self.query_one("#head", Static)
        if d is None:
            head.update(Text(f"study {self.study_uid} is not in the database", style="red"))
            return
        t = Text()
        t.append("Study ", style="bold")
        t.append(f"{d['study_uid']}\n")
        t.append(f"acc. {d['accession'] or '-'}  date {d['date'] or '-'}  {d['instances']} img, "
                 f"received {queries.stamp(d['received'])[:16]} UTC\n")
        for s in d["series"]:
            used = d["latest"] is not None and d["latest"]["series_uid"] == s["uid"]
            t.append("  ▶ " if used else "    ", style="bold green")
            t.append(f"series {_num(s['number'])} {s['modality']} {s['description'][:28]} "
                     f"({s['instances']} img){' - analysed' if used else ''}\n")
        lat = d["latest"]
        if lat is None:
            job = d["jobs"][0] if d["jobs"] else None
            t.append("no result yet" + (f" (job {job['id']} {job['state']} {job['error']})" if job else ""),
                     style="yellow")
        else:
            t.append(f"result v{lat['version']}  bundle {lat['bundle']}  backend {lat['backend']}")
        head.update(t)
        organs = lat["organs"] if lat else []
        _fill(self.query_one("#organs", DataTable),
              [(o["organ"], o["status"], _num(o["volume_ml"]), _num(o["mean_hu"]), _num(o["std_hu"]))
               for o in organs], [o["organ"] for o in organs])
        findings = lat["findings"] if lat else []
        _fill(self.query_one("#findings", DataTable),
              [(f["finding"], f["organ"], f"{f['score']:.2f}", _num(f["threshold"], "{:.2f}"),
                Text("POSITIVE", style="bold red") if f["positive"] else
                (Text("not screened", style="dim") if never_called(f["threshold"]) else "neg")) for f in findings],
              [f"{i}" for i in range(len(findings))])
        draft = Text()
        draft.append(f"Draft report - {DRAFT_LABEL}\n", style="bold yellow")
        if lat and lat["draft"]:
            draft.append(lat["draft"].rstrip() + "\n")
            if lat["reviewed_by"]:
                draft.append(f"reviewed by {lat['reviewed_by']} at {queries.stamp(lat['reviewed_at'])} UTC",
                             style="green")
            else:
                draft.append("not reviewed (v = mark reviewed)", style="yellow")
        else:
            draft.append("no draft", style="dim")
        self.query_one("#draft", Static).update(draft)
        v = Text()
        for x in d["versions"]:
            v.append(f"v{x['version']} {queries.stamp(x['created'])} {x['reason']} bundle {x['bundle']}"
                     f"{' reviewed ' + x['reviewed_by'] if x['reviewed_by'] else ''}\n")
        for j in d["jobs"]:
            if j["state"] != "done":
                v.append(f"job {j['id']} (v{j['version']}) {j['state']} tries {j['attempts']} {j['error']}\n",
                         style="red" if j["state"] == "failed" else "yellow")
        self.query_one("#versions", Static).update(v or Text("-"))
        dels = lat["deliveries"] if lat else []
        _fill(self.query_one("#deliveries", DataTable),
              [(str(x["id"]), str(x["version"]), x["destination"], x["kind"],
                Text(x["state"], style={"sent": "green", "failed": "bold red"}.get(x["state"], "yellow")),
                str(x["attempts"]), queries.stamp(x["sent_at"]) if x["sent_at"] else x["error"][:40])
               for x in dels], [str(x["id"]) for x in dels])

    def _selected_delivery(self) -> dict | None:
        table = self.query_one("#deliveries", DataTable)
        if not table.row_count or self.detail is None or self.detail["latest"] is None:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        return next((x for x in self.detail["latest"]["deliveries"] if str(x["id"]) == key), None)

    def action_reanalyse(self) -> None:
        self.confirm_then(f"Queue a new analysis of study {self.study_uid}?",
                          lambda: actions.reanalyse(self.app.store, self.study_uid, self.app.actor))

    def action_review(self) -> None:
        if not self.detail or not self.detail["latest"]:
            self.tell(actions.Outcome(False, "no result to review yet"))
            return
        self.tell(actions.review(self.app.store, self.detail["latest"]["analysis_id"], self.app.actor))

    def action_resend(self) -> None:
        d = self._selected_delivery()
        if d is None:
            self.tell(actions.Outcome(False, "no delivery selected (Tab to the deliveries table)"))
            return
        self.tell(actions.resend(self.app.store, d["id"], self.app.actor))

    def action_echo(self) -> None:
        d = self._selected_delivery()
        if d is None:
            self.tell(actions.Outcome(False, "no delivery selected; C-ECHO needs a destination"))
            return
        self.app.echo_destination(d["destination"])


# --- Jobs -----------------------------------------------------------------------------------------------------------

class JobsScreen(Base):
    TITLE = "Jobs"
    BINDINGS = [Binding("r", "retry", "Retry"), Binding("x", "cancel_job", "Cancel"),
                Binding("f", "filter", "Failed only/all")]
    only_failed = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield Static(id="joberr")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("Job", "Study", "Ver", "State", "Tries", "Reason", "Worker")
        super().on_mount()
        self.query_one(DataTable).focus()

    def reload(self) -> None:
        self.rows = queries.jobs(self.app.store, state="failed" if self.only_failed else None)
        _fill(self.query_one(DataTable),
              [(str(j["id"]), _short_uid(j["study_uid"], 18), str(j["version"]),
                Text(j["state"], style={"failed": "bold red", "running": "cyan", "done": "green"}.get(j["state"], "")),
                f"{j['attempts']}/{j['max_attempts']}", j["reason"][:18], (j["worker"] or "-")[:16])
               for j in self.rows], [str(j["id"]) for j in self.rows])
        self._show_error()

    def _selected(self) -> dict | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        return next((j for j in self.rows if str(j["id"]) == key), None)

    def _show_error(self) -> None:
        j = self._selected()
        self.query_one("#joberr", Static).update(
            Text(f"job {j['id']}: {j['error']}", style="red") if j and j["error"] else "")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_error()

    def action_retry(self) -> None:
        j = self._selected()
        if j:
            self.tell(actions.retry_job(self.app.store, j["id"], self.app.actor))

    def action_cancel_job(self) -> None:
        j = self._selected()
        if j:
            self.confirm_then(f"Cancel job {j['id']} ({j['state']}) of study {j['study_uid']}?",
                              lambda: actions.cancel_job(self.app.store, j["id"], self.app.actor))

    def action_filter(self) -> None:
        self.only_failed = not self.only_failed
        self.reload()


# --- Config and audit -----------------------------------------------------------------------------------------------

class ConfigScreen(Base):
    TITLE = "Config"
    BINDINGS = [Binding("o", "echo_all", "C-ECHO all destinations")]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(id="config")
        yield Footer()

    def reload(self) -> None:
        view = actions.validate_config(self.app.config_path)
        t = Text()
        t.append(f"{view.path or '(no config file)'}  ", style="bold")
        t.append("valid\n" if not view.errors else f"{len(view.errors)} error(s)\n",
                 style="green" if not view.errors else "bold red")
        by_line: dict[int, list[str]] = {}
        for line, msg in view.errors:
            if line is None:
                t.append(f"✗ {msg}\n", style="bold red")
            else:
                by_line.setdefault(line, []).append(msg)
        for i, ln in enumerate(view.lines):
            bad = i in by_line
            t.append(f"{i + 1:>3} ", style="dim")
            t.append(ln + "\n", style="bold red" if bad else "")
            for msg in by_line.get(i, []):
                t.append(f"    ↑ {msg}\n", style="red")
        self.query_one("#config", Static).update(t)

    def action_echo_all(self) -> None:
        cfg = self.app.node_config
        if cfg is None or not cfg.destinations:
            self.tell(actions.Outcome(False, "no destinations configured"))
            return
        for name in cfg.destinations:
            self.app.echo_destination(name)


class AuditScreen(Base):
    TITLE = "Audit log"

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        yield Static(id="auditdetail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("UTC", "Kind", "Who", "What", "Detail")
        super().on_mount()
        self.query_one(DataTable).focus()

    def reload(self) -> None:
        self.rows = queries.audit_log(self.app.store)
        _fill(self.query_one(DataTable),
              [(queries.stamp(r["at"])[5:16], r["kind"], r["who"][:22], r["what"][:24], escape(r["detail"][:60]))
               for r in self.rows], [str(i) for i in range(len(self.rows))])
        self._show_detail()

    def _show_detail(self) -> None:
        table = self.query_one(DataTable)
        r = self.rows[table.cursor_row] if self.rows and 0 <= table.cursor_row < len(self.rows) else None
        self.query_one("#auditdetail", Static).update(
            Text(f"{queries.stamp(r['at'])} UTC {r['who']}: {r['what']} {r['detail']}") if r else "")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()


# --- the app --------------------------------------------------------------------------------------------------------

class AdminApp(App):
    TITLE = "TotalFM admin"
    SUB_TITLE = DRAFT_LABEL
    CSS_PATH = "admin.tcss"
    MODES = {"dashboard": DashboardScreen, "studies": StudiesScreen, "jobs": JobsScreen, "config": ConfigScreen,
             "audit": AuditScreen}
    DEFAULT_MODE = "dashboard"
    BINDINGS = [
        Binding("1", "switch_mode('dashboard')", "Dash"),
        Binding("2", "switch_mode('studies')", "Studies"),
        Binding("3", "switch_mode('jobs')", "Jobs"),
        Binding("4", "switch_mode('config')", "Config"),
        Binding("5", "switch_mode('audit')", "Audit"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, store, *, config_path: str | Path | None = None, node_config=None,
                 spool_dir: str | None = None, min_free_bytes: int = 1 << 30, max_usage_percent: float = 95.0,
                 actor: str | None = None, refresh_seconds: float = 2.0,
                 now: Callable[[], dt.datetime] = utcnow, disk_usage=shutil.disk_usage):
        super().__init__()
        self.store = store
        self.config_path = str(config_path) if config_path else None
        self.node_config = node_config
        self.spool_dir = spool_dir
        self.min_free_bytes = min_free_bytes
        self.max_usage_percent = max_usage_percent
        self.actor = actor or f"{_user()}@tui"
        self.refresh_seconds = refresh_seconds
        self.now = now
        self._disk_usage = disk_usage
        self.last_message = ""

    def disk(self) -> dict:
        return queries.disk_state(self.spool_dir, min_free_bytes=self.min_free_bytes,
                                  max_usage_percent=self.max_usage_percent, disk_usage=self._disk_usage)

    @work(thread=True, group="echo")
    def echo_destination(self, destination: str) -> actions.Outcome:
        """C-ECHO off the UI thread (an unreachable peer takes the network timeout)."""
        self.call_from_thread(self.notify, f"C-ECHO {destination} ...", timeout=3)
        out = actions.echo(self.node_config, destination, self.store, self.actor)
        self.call_from_thread(self._echo_done, out)
        return out

    def _echo_done(self, out: actions.Outcome) -> None:
        self.last_message = out.message
        self.notify(out.message, severity="information" if out.ok else "error", timeout=8)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"
