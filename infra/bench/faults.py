"""`handover bench faults`: every procedure under faults injected at its steps, on a loaded lab.

Each row starts a fresh bench lab with its load running, runs one procedure in this process and,
the moment a given step of it has run, injects one fault: a lab fault (`sshd-down`, `frozen`,
`crash`, `db-unreachable`, `slow`) on the move's source or target, a fault of the database
server (`frozen`: every server process stopped; `crash`: aborted, started again when healed),
Slack unreachable, kill -9
of the run itself (then the procedure runs in a process of its own), or the Prefect server
stopped and started again mid-move (then the move runs in a process of its own, against a server
of the row's own, and two more moves for the service must not be refused by a lock the restart
left held). After the run the fault is
healed (a crashed host reboots) and, when the run did not complete, the procedure is run again,
as an operator would; fence-host follows an emergency move whose host was down. Each row says:

* the first run's end (completed / partial / failed / refused / killed) and whether its report
  matches the live state (where each agent runs, read over SSH afterwards);
* whether the site converged (every agent of the procedure on one host, the one the procedure
  promises, with its channel Active) and how long from the fault until it had;
* agents ever serving on two hosts (the lab's score; must be 0) and jobs lost against what the
  procedure allows (a clean move: none; an emergency move gives up the failed host's transfers).

The full matrix takes about half a minute a row; `--procedure`, `--kind` and `--where` choose a
part of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.lab.faults import DB_FAULT_KINDS, FAULT_KINDS
from infra.lab.lab import Lab, derive_site_file
from infra.move_process import start_clean_move

ROOT = Path(__file__).resolve().parent.parent.parent
P = "glite-transfer-channel-agent-urlcopy-"
ON_101 = [P + c for c in ("CERN-CERN", "CERN-RAL", "CERN-FNAL", "CERN-IN2P3")]
WORKLOAD: dict[str, Any] = {
    "jobs_per_second_per_channel": 1.0,
    "max_active_per_channel": 3,
    "lock_wait_s": 4.0,
    "tick_s": 0.1,
    "transfers": {"short_s": [0.3, 1.5], "long_s": [3.0, 5.0], "long_fraction": 0.1, "seed": 7},
}
CONVERGE_BOUND_S = 90.0
#: after a server restart mid-move, the move back and the move again both run (none refused)
RESTART_OK = "completed then completed"


@dataclass(frozen=True)
class Row:
    """One cell of the matrix."""

    procedure: str  # clean-move/<mode> or emergency-move
    fault: str  # a lab fault kind, "slack-down", "kill-9" or "prefect-restart"
    where: str  # source, target, database, run
    after: str  # the step verb after which the fault is injected ("-": before the run)

    @property
    def name(self) -> str:
        return f"{self.procedure} | {self.fault} on {self.where} after {self.after}"


def matrix() -> list[Row]:
    """Every row of the full matrix."""
    rows: list[Row] = []
    for mode in ("pipelined", "full", "staged"):
        # the host faults a clean move cares about (a dead front end is the switch's)
        for kind in (k for k in FAULT_KINDS if k != "frontend-down"):
            for where in ("source", "target"):
                for after in ("set-inactive", "stop"):
                    rows.append(Row(f"clean-move/{mode}", kind, where, after))
        rows.append(Row(f"clean-move/{mode}", "slack-down", "run", "-"))
        rows.append(Row(f"clean-move/{mode}", "kill-9", "run", "stop"))
        rows.append(Row(f"clean-move/{mode}", "prefect-restart", "run", "stop"))
        # the database under the move: frozen (hangs) or crashed (refuses, then restarts)
        for kind in DB_FAULT_KINDS:
            for after in ("set-inactive", "stop"):
                rows.append(Row(f"clean-move/{mode}", kind, "database", after))
    # the emergency move: its host fails before the run (its case), the target may fail during
    for kind in ("sshd-down", "frozen", "crash"):
        rows.append(Row("emergency-move", kind, "source", "-"))
    for kind in ("slow", "db-unreachable"):
        rows.append(Row("emergency-move", kind, "target", "clear-disabled"))
    for kind in DB_FAULT_KINDS:
        rows.append(Row("emergency-move", kind, "database", "clear-disabled"))
    # after an emergency move of a crashed host: fence it when it is back, drop its sessions
    for kind in ("sshd-down", "frozen", "crash"):
        rows.append(Row("fence-host", kind, "source", "-"))
    for kind in DB_FAULT_KINDS:
        rows.append(Row("drop-db-lock", kind, "database", "-"))
    return rows


def _tear_down(lab: Lab) -> None:
    """Heal every fault (the database first: a frozen server would hang the lab's shutdown),
    stop the row's lab and delete its state, whatever fails on the way."""
    with contextlib.suppress(Exception):
        lab.heal_database()
    for h in lab.site.hosts:
        with contextlib.suppress(Exception):
            lab.heal(h.name)
    try:
        lab.down()
    finally:
        with contextlib.suppress(Exception):
            lab.remove_state()


def _fresh_lab(lab: Lab, out: dict[str, Any]) -> bool:
    """Start the row's lab from nothing: whatever an earlier row left (its hosts' `.disabled`
    files, its database) is stopped and deleted first. A lab that does not start is the row's
    error (in `out`), and False."""
    try:
        if lab.paths.root.exists():
            _tear_down(lab)
        lab.up()
    except Exception as exc:  # noqa: BLE001 - a row whose lab does not start is reported
        out["error"] = f"the row's lab did not start: {type(exc).__name__}: {exc}"[:500]
        _tear_down(lab)
        return False
    return True


def _fenced(lab: Lab, shell: Any) -> bool:
    """fts101 is back, its agents serve on fts102 only, are listed in its `.disabled` and do
    not run on it."""
    from tasks.site_state import snapshot_host

    serving = _serving(lab)
    if not all(serving.get(a) == {"fts102"} for a in ON_101):
        return False
    snap = snapshot_host(shell, "fts101")
    return snap.reachable and all(a in snap.disabled and not snap.runs(a) for a in ON_101)


def _no_sessions_of(lab: Lab, host: str) -> bool:
    from tasks.db_sessions import find_sessions

    try:
        return not find_sessions(lab.site, host)
    except Exception:  # noqa: BLE001 - a database that does not answer has not converged
        return False


def _one_after_crash(site_file: Path, row: Row, warmup_s: float) -> dict[str, Any]:
    """A fence-host or drop-db-lock row: the state both meet is fts101 crashed (its sessions
    still open on the server) and, for the fence, its agents moved by an emergency move and the
    host rebooted. The fault is injected before the run, healed after it; the run is repeated
    until converged."""
    from flows.drop_db_lock import drop_db_lock
    from flows.emergency_move import emergency_move
    from flows.fence_host import fence_host
    from tasks.remote import SiteShell

    lab = Lab.from_file(site_file)
    out: dict[str, Any] = {"row": row.name, **row.__dict__}
    if not _fresh_lab(lab, out):
        return out
    shell = SiteShell(lab.site)
    src = "fts101"
    try:
        time.sleep(warmup_s)
        before = lab.score(reset=True)
        lab.fault(src, "crash")
        if row.procedure == "fence-host":
            moved = emergency_move(str(site_file), src, pause_for_approval=False, return_state=True)
            out["emergency_move"] = getattr(moved.result(raise_on_failure=False), "status", "?")
            lab.heal(src)  # it reboots; its agents try to start and cannot (the locks are held)

            def run_once() -> Any:
                return fence_host(str(site_file), src, return_state=True)

            def converged() -> bool:
                return _fenced(lab, shell)
        else:

            def run_once() -> Any:
                return drop_db_lock(str(site_file), src, return_state=True)

            def converged() -> bool:
                return _no_sessions_of(lab, src)

        _inject(lab, row, src)
        t0 = time.monotonic()
        first = run_once()
        out["first_status"] = f"{first.name}: {first.message or ''}"[:300]
        out["fault_fired"] = True
        out["report_matches_live"] = None
        _heal(lab, row, src)
        reruns = 0
        deadline = time.monotonic() + CONVERGE_BOUND_S
        while not converged() and time.monotonic() < deadline:
            if reruns < 2:
                reruns += 1
                again = run_once()
                out.setdefault("reruns_status", []).append(
                    f"{again.name}: {again.message or ''}"[:240]
                )
            else:
                time.sleep(1.0)
        out["converged"] = converged()
        out["converge_s"] = round(time.monotonic() - t0, 2) if out["converged"] else None
        out["reruns"] = reruns
        time.sleep(0.5)
        score = lab.score()
        out["jobs_lost"] = score.jobs_lost - before.jobs_lost
        out["jobs_lost_allowed"] = "the crashed host's running transfers" + (
            ", and what the database fault ends by itself" if row.where == "database" else ""
        )
        # a database that hangs or crashes makes every host's agents drop their sessions (as
        # in a clean move's database rows): its losses may be anywhere
        out["jobs_lost_elsewhere"] = _lost_elsewhere(
            lab, None if row.where == "database" else {src}
        )
        out["agents_twice"] = len(score.agents_running_twice)
    except Exception as exc:  # noqa: BLE001 - a row that breaks is reported, the matrix goes on
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        shell.close()
        _tear_down(lab)
    return out


def _lost_elsewhere(lab: Lab, touched: set[str] | None) -> dict[str, int]:
    """The transfers lost since the score's reset on hosts outside `touched` (the hosts the
    fault and the procedure may cost transfers on; None: all of them), by host: a row that
    allows losses still loses none anywhere else."""
    if touched is None:
        return {}
    with contextlib.closing(lab.db.connect(timeout=10)) as conn:
        rows = conn.run(
            "SELECT coalesce(host, '?'), count(*) FROM jobs WHERE state = 'Lost' AND finished_at "
            ">= (SELECT CAST(value AS timestamptz) FROM lab_control WHERE key = 'score_since') "
            "GROUP BY 1"
        )
    return {str(h): int(n) for h, n in rows if h not in touched}


def _inject(lab: Lab, row: Row, host: str) -> None:
    if row.where == "database":
        lab.fault_database(row.fault)
    else:
        lab.fault(host, row.fault)


def _heal(lab: Lab, row: Row, host: str) -> None:
    if row.where == "database":
        lab.heal_database()
    else:
        lab.heal(host)


def _serving(lab: Lab) -> dict[str, set[str]]:
    return lab.serving(lab.site, lab.record())


def _converged(lab: Lab, shell: Any, to: str) -> bool:
    from tasks.site_state import snapshot_site

    serving = _serving(lab)
    if not all(serving.get(a) == {to} for a in ON_101):
        return False
    snap = snapshot_site(shell, [to])
    channels = [c.removeprefix(P) for c in ON_101]
    return all(snap.channels.get(c) == "Active" for c in channels)


@contextlib.contextmanager
def _fault_after(lab: Lab, row: Row, host: str, fired: dict[str, float]) -> Iterator[None]:
    from flows import progress

    def sink(kind: str, data: dict[str, Any]) -> None:
        if kind != "step" or fired or row.after == "-":
            return
        rec = data["record"]
        if rec.verb == row.after and rec.outcome in ("done", "forced"):
            fired["at"] = time.monotonic()
            _inject(lab, row, host)

    with progress.sink(sink):
        yield


def _one(site_file: Path, row: Row, warmup_s: float) -> dict[str, Any]:
    from flows.clean_move import clean_move
    from flows.emergency_move import emergency_move
    from flows.fence_host import fence_host
    from tasks.remote import SiteShell
    from tasks.site_state import snapshot_site

    lab = Lab.from_file(site_file)
    out: dict[str, Any] = {"row": row.name, **row.__dict__}
    if not _fresh_lab(lab, out):
        return out
    shell = SiteShell(lab.site)
    try:
        time.sleep(warmup_s)
        before = lab.score(reset=True)
        proc, mode = row.procedure.partition("/")[::2]
        src, dst = "fts101", "fts102"
        fault_host = src if row.where == "source" else dst
        fired: dict[str, float] = {}
        saved = {
            k: os.environ.get(k) for k in ("HANDOVER_SLACK_API_URL", "HANDOVER_SLACK_BOT_TOKEN")
        }

        def run_once() -> Any:
            if proc == "emergency-move":
                return emergency_move(
                    str(site_file), src, pause_for_approval=False, return_state=True
                )
            return clean_move(
                str(site_file), src, dst, mode=mode, pause_for_approval=False, return_state=True
            )

        started = time.monotonic()
        result: Any = None
        if row.fault == "kill-9":
            result = _killed_run(lab, site_file, mode, fired)
        elif row.fault == "prefect-restart":
            result, out["after_restart"] = _restarted_run(lab, site_file, mode, fired)
        else:
            if row.fault == "slack-down":  # a token, and nothing listening where Slack is
                os.environ["HANDOVER_SLACK_API_URL"] = "http://127.0.0.1:9/api/"
                os.environ["HANDOVER_SLACK_BOT_TOKEN"] = "xoxb-bench-faults"  # noqa: S105
                fired["at"] = time.monotonic()
            elif row.after == "-":
                lab.fault(fault_host, row.fault)
                fired["at"] = time.monotonic()
            try:
                with _fault_after(lab, row, fault_host, fired):
                    result = run_once().result(raise_on_failure=False)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        if row.fault == "kill-9":
            out["first_status"] = "killed"
        elif row.fault == "prefect-restart":
            out["first_status"] = result.status if result is not None else "no report"
        elif isinstance(result, BaseException):
            out["first_status"] = f"crashed: {type(result).__name__}: {result}"[:300]
        else:
            out["first_status"] = getattr(result, "status", "?")
        out["fault_fired"] = bool(fired)
        # the channels as the first run left them (a move that gives up must leave them Active)
        out["first_channels"] = dict(getattr(result, "channels", None) or {})
        # the report against the live state, read now, before the fault is healed (a crashed
        # host that reboots starts its agents again: fence-host's business, not the report's)
        where = getattr(result, "where", None) or {}
        if row.fault == "prefect-restart":  # read before the moves that test the lock
            out["report_matches_live"] = bool(fired["matches"]) if "matches" in fired else None
        elif where:
            live = snapshot_site(shell, [src, dst])
            out["report_matches_live"] = all(live.where(a) == hs for a, hs in where.items())
        else:
            out["report_matches_live"] = None
        if row.fault in FAULT_KINDS:
            _heal(lab, row, fault_host)
        # converge: as an operator would, run it again (and fence a host that was down)
        reruns = 0
        t0 = fired.get("at", started)
        deadline = time.monotonic() + CONVERGE_BOUND_S
        # a clean move whose source crashed: its report sends the operator to the emergency
        # move (the host's alert would start it too), then to fence-host when it is back
        lost_source = proc == "clean-move" and row.where == "source" and row.fault == "crash"
        while not _converged(lab, shell, dst) and time.monotonic() < deadline:
            if reruns < 2:
                reruns += 1
                again = (
                    emergency_move(str(site_file), src, pause_for_approval=False, return_state=True)
                    if lost_source
                    else run_once()
                ).result(raise_on_failure=False)
                out.setdefault("reruns_status", []).append(
                    f"{getattr(again, 'status', '?')}: {getattr(again, 'summary', again)}"[:240]
                )
                if proc == "emergency-move" or lost_source:
                    fence_host(str(site_file), src, return_state=True)
            else:
                time.sleep(1.0)
        out["converged"] = _converged(lab, shell, dst)
        out["converge_s"] = round(time.monotonic() - t0, 2) if out["converged"] else None
        if not out["converged"]:  # what is live instead, to tell why
            live = snapshot_site(shell, [src, dst])
            out["live"] = {
                "serving": {a.removeprefix(P): sorted(h) for a, h in _serving(lab).items()},
                "running": {a.removeprefix(P): live.where(a) for a in ON_101},
                "channels": live.channels,
            }
        out["reruns"] = reruns
        time.sleep(0.5)
        score = lab.score()
        out["jobs_lost"] = score.jobs_lost - before.jobs_lost
        out["jobs_lost_allowed"] = (
            "the host's running transfers"
            # a crashed host's transfers die with it, whichever end of the move it was (a
            # target also runs agents of its own): `jobs_lost_elsewhere` checks no other host
            # lost any
            if proc == "emergency-move" or (row.fault == "crash" and row.where != "database")
            # a database that hangs or crashes, or a host cut off from it, for more than a few
            # seconds makes the agents concerned drop their sessions, and their running
            # transfers' state is lost, move or no move
            else "what the database fault ends by itself"
            if row.where == "database" or row.fault == "db-unreachable"
            else 0
        )
        # an emergency move stops its host's agents without a drain: their transfers may go
        out["jobs_lost_elsewhere"] = _lost_elsewhere(
            lab,
            None
            if row.where == "database"
            else {fault_host, src}
            if proc == "emergency-move"
            else {fault_host},
        )
        out["agents_twice"] = len(score.agents_running_twice)
    except Exception as exc:  # noqa: BLE001 - a row that breaks is reported, the matrix goes on
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        shell.close()
        _tear_down(lab)
    return out


def _killed_run(lab: Lab, site_file: Path, mode: str, fired: dict[str, float]) -> Any:
    """The move in a process of its own, killed -9 once its first agent has stopped."""
    proc = start_clean_move(site_file, "fts101", "fts102", mode=mode)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            serving = _serving(lab)
            if any(not serving.get(a) for a in ON_101):  # an agent stopped: mid-move
                break
            time.sleep(0.05)
        fired["at"] = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return None


def _restarted_run(
    lab: Lab, site_file: Path, mode: str, fired: dict[str, float]
) -> tuple[Any, str]:
    """The move in a process of its own against a Prefect server of this row's own, which is
    stopped once the move's first agent has stopped and started again 5 s later; then a second
    procedure for the service (the move back) must not be refused. Returns the first run's
    result (None when it printed none) and the second's status."""
    from flows.clean_move import CleanMoveResult
    from infra.prefect_server import RestartableServer

    home = Path(tempfile.mkdtemp(prefix="handover-bench-restart-"))
    srv = RestartableServer(home)
    srv.start()
    env = {**os.environ, "PREFECT_API_URL": srv.url, "PREFECT_LOGGING_LEVEL": "WARNING"}

    def move(src: str, dst: str) -> subprocess.Popen[str]:
        return start_clean_move(site_file, src, dst, mode=mode, env=env)

    def report(proc: subprocess.Popen[str], timeout_s: float) -> Any:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        try:
            return CleanMoveResult.model_validate_json(out)
        except ValueError:
            return None

    try:
        first = move("fts101", "fts102")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if any(not _serving(lab).get(a) for a in ON_101):  # an agent stopped: mid-move
                break
            time.sleep(0.05)
        fired["at"] = time.monotonic()
        srv.stop()
        time.sleep(5.0)
        srv.start()
        result = report(first, 300)
        if result is not None and result.where:
            from tasks.remote import SiteShell
            from tasks.site_state import snapshot_site

            shell = SiteShell(lab.site)
            try:
                live = snapshot_site(shell, ["fts101", "fts102"])
            finally:
                shell.close()
            fired["matches"] = float(all(live.where(a) == h for a, h in result.where.items()))
        second = report(move("fts102", "fts101"), 300)
        # the move back is the lock's test; the row then judges the move to fts102 again
        again = report(move("fts101", "fts102"), 300)
        statuses = [r.status if r is not None else "no report" for r in (second, again)]
        return result, " then ".join(statuses)
    finally:
        srv.stop()


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table, as the fault matrix page shows them."""
    out = [
        "| procedure | fault | first run | report = live | converged | jobs lost (allowed) "
        "| twice |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fault = f"{r['fault']} on {r['where']}" + (
            f" after {r['after']}" if r["after"] != "-" else " before the run"
        )
        first = str(r.get("first_status", "?")).split(":", 1)[0].lower()
        if "error" in r:
            converged = f"ERROR: {r['error'][:80]}"
        elif r.get("converged"):
            n = r.get("reruns", 0)
            converged = f"{r.get('converge_s')} s" + (f", {n} re-run{'s' * (n > 1)}" if n else "")
        else:
            converged = "**no**"
        if "after_restart" in r:
            converged += f"; then {r['after_restart']}"
        allowed = r.get("jobs_lost_allowed")
        lost = f"{r.get('jobs_lost')}" + ("" if allowed == 0 else f" ({allowed})")
        matches = {True: "yes", False: "**no**", None: "-"}[r.get("report_matches_live")]
        out.append(
            f"| {r['procedure']} | {fault} | {first} | {matches} | {converged} | {lost} "
            f"| {r.get('agents_twice')} |"
        )
    return out


def bench_faults(
    *,
    procedures: list[str] | None = None,
    kinds: list[str] | None = None,
    wheres: list[str] | None = None,
    afters: list[str] | None = None,
    warmup_s: float = 3.0,
    octet: int = 248,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Run the chosen rows of the matrix; return every row and a summary.

    `octet` places the bench's lab on 127.<octet>.0.0/16 (and its database on port 20000 +
    octet), so that two benches can run side by side.
    """
    from rich.console import Console

    from infra.run import configure_api

    configure_api(Console(stderr=True))
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-faults-"))
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "faults.yaml",
        name=f"benchfaults{octet}",
        octet=octet,
        db_port=20000 + octet,
        state_dir=Path(f"/var/tmp/handover-lab/bench-faults-{os.getpid()}"),
        lab=WORKLOAD,
        procedures={
            "clean-move": {"poll_interval_s": 0.25, "drain_timeout_s": 60},
            "emergency-move": {"approval": "none"},
        },
    )
    rows = [
        r
        for r in matrix()
        if (not procedures or any(r.procedure.startswith(p) for p in procedures))
        and (not kinds or r.fault in kinds)
        and (not wheres or r.where in wheres)
        and (not afters or r.after in afters)
    ]
    results = []
    for i, row in enumerate(rows):
        progress(f"{i + 1}/{len(rows)}: {row.name}")
        one = _one_after_crash if row.procedure in ("fence-host", "drop-db-lock") else _one
        res = one(site_file, row, warmup_s)
        progress(
            f"    first run {res.get('first_status')}, converged {res.get('converged')} "
            f"in {res.get('converge_s')} s, jobs lost {res.get('jobs_lost')}, agents twice "
            f"{res.get('agents_twice')}" + (f"; ERROR {res['error']}" if "error" in res else "")
        )
        results.append(res)
    bad = [
        r
        for r in results
        if "error" in r
        or not r.get("converged")
        or r.get("agents_twice")
        or (r.get("jobs_lost_allowed") == 0 and r.get("jobs_lost"))
        or r.get("jobs_lost_elsewhere")
        or r.get("report_matches_live") is False
        or (r.get("fault") == "prefect-restart" and r.get("after_restart") != RESTART_OK)
    ]
    summary = [
        f"fault matrix: {len(results)} rows, {len(results) - len(bad)} converged with no agent "
        "twice, no job lost where none may be and a report that matches the live state",
        *(
            f"  {r['row']}: first {r.get('first_status')}, report matches live "
            f"{r.get('report_matches_live')}, converged {r.get('converged')} "
            f"({r.get('converge_s')} s, {r.get('reruns')} re-runs), jobs lost {r.get('jobs_lost')},"
            f" twice {r.get('agents_twice')}"
            + (
                f", lost elsewhere {r['jobs_lost_elsewhere']}"
                if r.get("jobs_lost_elsewhere")
                else ""
            )
            + (f", after the restart {r['after_restart']}" if "after_restart" in r else "")
            + (f", ERROR {r['error']}" if "error" in r else "")
            for r in results
        ),
    ]
    return {"rows": results, "ok": not bad, "summary": summary, "table": markdown_table(results)}
