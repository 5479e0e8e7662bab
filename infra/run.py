"""`handover run PROCEDURE ...`: run a procedure against the configured Prefect API, show its
progress in the terminal and print its report (or, with --json, its typed result).

Exit codes: 0 completed (or dry run), 2 partial (the site is consistent but not everything moved),
3 rejected, 1 failed, refused or cancelled.
"""

from __future__ import annotations

import getpass
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from flows import progress
from infra import prefect_server

EXIT = {"completed": 0, "dry-run": 0, "partial": 2, "rejected": 3}


class _SafeStream:
    """A terminal stream whose loss (closed pipe, hung-up terminal) never stops a procedure:
    writes after the loss are dropped. Everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return int(self._stream.write(text))
            except (BrokenPipeError, OSError):
                self.lost = True
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except (BrokenPipeError, OSError):
                self.lost = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def protect_terminal() -> None:
    """Make a procedure run from a terminal survive the terminal: a closed pipe or a hung-up
    session (SIGHUP) lets the procedure go on to its end; SIGTERM cancels it the way Ctrl-C does,
    through its compensation. Call before Prefect is imported (its console handler keeps the
    stream it finds)."""
    sys.stdout = _SafeStream(sys.stdout)
    sys.stderr = _SafeStream(sys.stderr)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)


def configure_api(console: Console) -> str:
    """Use PREFECT_API_URL when set; otherwise the local server (started if needed)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if "PREFECT_API_AUTH_STRING" not in os.environ:
            # the local server handover started: it requires its auth string
            auth = prefect_server.auth_for(url)
            if auth:
                os.environ["PREFECT_API_AUTH_STRING"] = auth
        return url
    url, started = prefect_server.ensure_server()
    os.environ["PREFECT_API_URL"] = url
    console.print(
        Text(
            f"PREFECT_API_URL not set: using the local Prefect server at {url}"
            f"{' (started it)' if started else ''}",
            style="dim",
        )
    )
    return url


class TerminalProgress:
    """Draws a procedure's progress events: one line per step, a live drain line."""

    def __init__(self, console: Console, ui: str) -> None:
        self.console = console
        self.ui = ui
        self.live = Live(Text(""), console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> TerminalProgress:
        self.live.__enter__()
        progress.add_sink(self)
        return self

    def __exit__(self, *exc: object) -> None:
        progress.remove_sink(self)
        self.live.__exit__(None, None, None)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        c = self.live.console
        if kind == "plan":
            plan = data["plan"]
            if plan.ok:
                c.print(
                    f"plan: {len(plan.agents)} agent(s), {len(plan.steps)} steps, "
                    f"est. {plan.estimated_duration_s:.0f} s ({plan.mode})"
                )
                for n in plan.notes:
                    c.print(f"  [dim]{escape(n)}[/dim]")
        elif kind == "approval-wait":
            from prefect.context import FlowRunContext

            ctx = FlowRunContext.get()
            rid = ctx.flow_run.id if ctx and ctx.flow_run else "?"
            c.print(
                f"[yellow]waiting for approval[/yellow]: open {self.ui}/runs/flow-run/{rid} "
                "and fill in the form (decision, who, comment)"
            )
        elif kind == "approval":
            c.print(f"approval: {escape(data['record'].sentence())}")
        elif kind == "step":
            rec = data["record"]
            mark = {
                "done": "[green]ok[/green]",
                "forced": "[red]forced[/red]",
                "failed": "[red]FAILED[/red]",
                "compensation": "[yellow]undo[/yellow]",
                "recovered": "[yellow]retry[/yellow]",
            }
            c.print(
                f"{rec.ended_at:%H:%M:%S} {mark.get(rec.outcome, rec.outcome)} "
                f"{escape(rec.sentence)}  [dim]({data['done']}/{data['total']})[/dim]"
            )
        elif kind == "drain":
            busy = ", ".join(f"{ch} {n}" for ch, n in data["running"].items())
            self.live.update(Text(f"running transfers on {data['host']}: {busy}", style="cyan"))


def run_procedure(procedure: str, params: dict[str, Any], *, as_json: bool) -> int:
    """Run a procedure in this process against the Prefect API; print the report or JSON."""
    console = Console(stderr=True, highlight=False)
    url = configure_api(console)
    ui = url.removesuffix("/api")
    # the terminal shows progress lines; Prefect's console lines would repeat them (the run's
    # logs still reach the API and the UI)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    if procedure in HOST_PROCEDURES:
        return _run_host_procedure(procedure, params, console, ui, as_json=as_json)
    if procedure != "clean-move":
        console.print(f"[red]unknown procedure {procedure!r}[/red]")
        return 1
    from flows.clean_move import clean_move, report_markdown

    params.setdefault("requested_by", getpass.getuser())
    seen: dict[str, Any] = {}

    def keep_result(kind: str, data: dict[str, Any]) -> None:
        if kind == "result":
            seen["result"] = data["result"]

    result: Any
    with TerminalProgress(console, ui), progress.sink(keep_result):
        try:
            state = clean_move(**params, return_state=True)
            result = state.result(raise_on_failure=False)
        except KeyboardInterrupt as exc:
            console.print(
                f"[red]interrupted ({escape(str(exc) or 'Ctrl-C')})[/red]: the move "
                "compensated what it had started; see the report"
            )
            result = seen.get("result")
            if result is None:
                return 130
    return _report(console, result, report_markdown, ui, as_json=as_json)


#: the procedures `handover run` starts besides the clean move: the module of each, which has
#: the flow (named as the module, or after a colon) and its `report_markdown`
HOST_PROCEDURES = {
    "geo-failover": "flows.geo_failover",
    "geo-failback": "flows.geo_failover:geo_failback",
    "emergency-move": "flows.emergency_move",
    "fence-host": "flows.fence_host",
    "switch": "flows.switch",
    "rolling-upgrade": "flows.rolling_upgrade",
    "drop-db-lock": "flows.drop_db_lock",
}


def _run_host_procedure(
    procedure: str, params: dict[str, Any], console: Console, ui: str, *, as_json: bool
) -> int:
    name, _, function = HOST_PROCEDURES[procedure].partition(":")
    module = importlib.import_module(name)
    flow = getattr(module, function or module.__name__.rpartition(".")[2])

    def say(kind: str, data: dict[str, Any]) -> None:
        if kind == "step-sentence":
            console.print(escape(data["sentence"]))
        elif kind == "step":
            rec = data["record"]
            mark = "" if rec.outcome == "done" else f"{rec.outcome}: "
            console.print(escape(mark + rec.sentence))
        elif kind == "approval-wait":
            console.print(
                f"[yellow]waiting for approval[/yellow] of the {escape(data['what'])}: approve "
                f"or reject in Slack or in the Prefect UI (run {data.get('run_id')}); "
                "--yes skips this"
            )

    params.setdefault("requested_by", getpass.getuser())
    with progress.sink(say):
        state = flow(**params, return_state=True)
    result: Any = state.result(raise_on_failure=False)
    return _report(console, result, module.report_markdown, ui, as_json=as_json)


def _report(
    console: Console,
    result: Any,
    report_markdown: Callable[[Any], str],
    ui: str,
    *,
    as_json: bool,
) -> int:
    """Print a procedure's typed result (JSON) or its report (markdown); its exit code."""
    if isinstance(result, BaseException):
        console.print(f"[red]the flow crashed:[/red] {escape(str(result))}")
        return 1
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        from rich.markdown import Markdown

        Console(highlight=False).print(Markdown(report_markdown(result)))
        if result.flow_run_id:
            console.print(f"[dim]run: {ui}/runs/flow-run/{result.flow_run_id}[/dim]")
    return EXIT.get(result.status, 1)
