"""`handover bench geo`: the geo failover of a replicated tool under load, timed, on geo labs of
the bench's own (`infra.lab.geo`).

The bench starts a temporary Prefect server (SQLite) and a geo lab at ``127.0.OCTET.x`` with a
block of free ports and a state directory of its own (never the operator's lab at
127.0.40.x), runs the flows in this process without approval (``pause_for_approval=False``) and
stops everything it started, also on a failure or Ctrl-C. Clients write through the tool's
name at `RATE` writes per second, each resolving it through a site's caching resolver (a
process of their own: `infra.lab.geo.clients`). The rows (`infra.bench.geo_figures.ROWS`),
each over its rounds:

1. **planned**: a planned failover to the other site (the direction alternates, so rounds are
   independent): the clients' outage (the longest span without an acknowledged write), the
   flow's duration, writes lost and writes accepted by a fenced side (both must be 0).
2. **killed-ttl5**, **killed-ttl60**: with the clients writing, the geo watch runs once (a lag
   reading on record), the active site is killed and failed over: kill -> target promoted,
   kill -> the first write acknowledged at the target through a resolver that had cached the
   old answer (a probe of its own), kill -> the clients' first acknowledged write; the writes
   lost against the reading (each must lie in the stated window: acknowledged by the lost
   site after the reading's replicated point); then, untimed, the site is restored, the watch
   runs and `geo_failback` brings the tool back. The 60 s row runs on a second lab whose
   ``geo.ttl_s`` is 60; its rounds take over a minute (2 by default).
3. **master-down**: the old active site's master stopped, a planned failover (the names move
   on the other master), the master started again and the watch run: the time until it was
   repaired, the clients' outage, writes lost 0.
4. **flood**: while a planned failover runs, threads (in a process of their own) query the
   tool's first name through one site's resolver as fast as it answers: queries sent,
   answered, lost (no answer within 2 s), per second, and whether each thread's answers
   flipped from the old address to the new one exactly once and never back.

What a round does is `infra.bench.geo_rounds`'s; the figures (median and min-max over the
rounds), the checks and the lines printed are `infra.bench.geo_figures`'s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.bench.geo_figures import (
    DEFAULT_ROUNDS,
    DEFAULT_ROUNDS_TTL60,
    ROWS,
    TITLES,
    TTL,
    GeoBench,
    Round,
    Row,
    RowName,
    judge,
    summary_lines,
)
from infra.bench.geo_rounds import RATE, ROUNDS, BenchLab

ROOT = Path(__file__).resolve().parent.parent.parent
GEO_SITE = ROOT / "config" / "sites" / "geo-lab.yaml"
#: the bench labs' loopback block 127.0.OCTET.x (no other lab or bench uses it)
OCTET = 251

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def _round_line(row: RowName, i: int, n: int, r: Round) -> str:
    shown = ", ".join(f"{k} {getattr(r, k)}" for k in type(r).FIGURES if getattr(r, k) is not None)
    return f"{row} {i + 1}/{n} {r.direction}: {shown}"


def run_row(g: BenchLab, row: Row, progress: Progress = _quiet) -> Row:
    """Run `row`'s rounds on `g`, stopping at the first that fails; the row judged."""
    for i in range(row.rounds_asked):
        progress(f"{row.row} {i + 1}/{row.rounds_asked}: running")
        try:
            r = ROUNDS[row.row](g, i)
        except Exception as exc:  # noqa: BLE001 - the row says why it stopped
            row.error = f"round {i + 1}: {exc}"
            progress(f"{row.row} {i + 1}/{row.rounds_asked}: FAILED: {exc}")
            break
        row.rounds.append(r)
        progress(_round_line(row.row, i, row.rounds_asked, r))
    return judge(row)


@contextlib.contextmanager
def bench_lab(
    work: Path, ttl: int, progress: Progress = _quiet, *, octet: int = OCTET
) -> Iterator[BenchLab]:
    """A geo lab of the bench's own at TTL `ttl` (module docstring), up for the block, then
    down (checked: nothing left running) and its state removed (kept when the block failed:
    its logs).

    Args:
        work: where its site file goes.
        ttl: the names' TTL (``geo.ttl_s``).
        progress: what to say as it comes up and goes down.
        octet: its loopback block 127.0.OCTET.x (a test's lab number; default `OCTET`).

    Raises:
        RuntimeError: processes of the lab still ran after it was stopped.
    """
    from infra.lab.geo.derive import derive_geo_site_file, port_count
    from infra.lab.geo.lab import GeoLab
    from infra.ports import free_port_block

    state = Path("/var/tmp/handover-lab") / f"bench-geo{ttl}-{os.getpid()}"
    site_file = derive_geo_site_file(
        GEO_SITE,
        work / f"benchgeo{ttl}.yaml",
        octet,
        free_port_block(port_count(yaml.safe_load(GEO_SITE.read_text()))),
        state_dir=state,
        name=f"benchgeo{ttl}",
    )
    data = yaml.safe_load(site_file.read_text())
    data["geo"]["ttl_s"] = ttl
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    lab = GeoLab.from_file(site_file)
    progress(f"TTL {ttl} s: the bench's geo lab up at 127.0.{octet}.x ({state})")
    lab.up(progress=lambda m: progress(f"TTL {ttl} s: {m}"))
    g: BenchLab | None = None
    try:
        g = BenchLab(site_file, lab, work)
        yield g
    except BaseException:
        if g is not None:
            g.keep = True
        raise
    finally:
        down = lab.down()
        progress(f"TTL {ttl} s: the geo lab down ({down['stopped']} processes stopped)")
        if down["leftovers"]:
            raise RuntimeError(f"the bench's geo lab left processes running: {down['leftovers']}")
        if g is not None and not g.keep:
            lab.remove_state()
        else:
            progress(f"TTL {ttl} s: the geo lab's state and logs kept in {state}")


@contextlib.contextmanager
def _runs_quiet() -> Iterator[None]:
    """Keep the runs' INFO lines off stderr (they still reach the Prefect API; warnings and
    errors still print): the bench's progress is its own lines. At the end, the logs still
    queued are sent."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's console handler, on the root logger
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield
    finally:
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)
        # the runs' logs still queued reach the API before the bench stops its server
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            for api in logging.getLogger(name).handlers:
                api.flush()


@contextlib.contextmanager
def _no_slack() -> Iterator[None]:
    """No Slack while the bench runs its flows (it times the path without it)."""
    keys = ("HANDOVER_SLACK_BOT_TOKEN", "HANDOVER_SLACK_SIGNING_SECRET")
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _run_rows(rows: dict[RowName, Row], work: Path, kept: list[str], progress: Progress) -> None:
    """Run `rows` on a temporary Prefect server and a lab per TTL, one lab after the other;
    a lab a row stopped on keeps its state, listed in `kept`."""
    from infra.bench.alert import temporary_prefect
    from infra.ports import free_port

    with _no_slack(), temporary_prefect(work / "prefect", free_port()), _runs_quiet():
        for ttl in sorted({r.ttl_s for r in rows.values()}):
            todo = [r for r in rows.values() if r.ttl_s == ttl]
            with bench_lab(work, ttl, progress) as g:
                stopped = ""
                for row in todo:
                    if stopped:
                        row.error = f"not run: {stopped}"
                        judge(row)
                        continue
                    run_row(g, row, progress)
                    if row.error:
                        stopped = f"row {row.row} stopped on this lab ({row.error})"
                        g.keep = True
                        kept.append(str(g.lab.paths.root))


def bench_geo(
    *,
    rounds: int | None = None,
    parts: Sequence[RowName] = ROWS,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Run the rows `parts` (module docstring), each over `rounds` rounds (default 3, and 2
    for the 60 s TTL row).

    Returns:
        The `GeoBench` as JSON data (with ``ok`` and the ``summary`` lines).

    Raises:
        RuntimeError: the geo lab cannot run here (what is missing).
    """
    from infra.lab.geo.lab import APT_PACKAGES, missing_prerequisites

    missing = missing_prerequisites()
    if missing:
        raise RuntimeError(
            f"the geo lab cannot run here: {'; '.join(missing)} (as root: apt-get install -y "
            f"{APT_PACKAGES})"
        )
    rows: dict[RowName, Row] = {}
    for p in ROWS:
        if p in parts:
            default = DEFAULT_ROUNDS_TTL60 if TTL[p] == 60 else DEFAULT_ROUNDS
            note = (
                f"a round takes over a minute at this TTL: {DEFAULT_ROUNDS_TTL60} rounds by default"
                if TTL[p] == 60
                else ""
            )
            rows[p] = Row(
                row=p,
                title=TITLES[p],
                ttl_s=TTL[p],
                rounds_asked=rounds or default,
                rounds_default=default,
                note=note,
            )
    work = Path(tempfile.mkdtemp(prefix="handover-bench-geo-"))
    kept: list[str] = []
    progress("temporary Prefect server")
    try:
        _run_rows(rows, work, kept, progress)
    except BaseException:
        progress(f"the bench's Prefect server's state and the site files kept in {work}")
        raise
    # the Prefect server's home and the site files (kept with the labs' logs after a failure)
    if not kept:
        shutil.rmtree(work, ignore_errors=True)
    ordered = list(rows.values())
    ok = bool(ordered) and all(r.ok for r in ordered)
    summary = summary_lines(ordered, RATE)
    if kept:
        summary.append(f"  logs kept: {', '.join(kept)}; {work}")
    return GeoBench(write_rate=RATE, rows=ordered, ok=ok, summary=summary).model_dump(mode="json")
