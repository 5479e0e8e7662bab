"""`handover bench clean-move`: the full procedure done by hand against the pipelined mode,
plain (stop then start, every channel Inactive at once) and with both of its refinements (hot
standby and the drain-aware cut-over), and all three against the physical limit.

Both run on the same workload: every round starts a fresh bench lab (its own addresses, port
and state directory, so an operator's lab is untouched) with the load off, then switches it on.
The load generator's stream is the same on every run (`infra.lab.workload`: each channel's k-th
job has a fixed duration and is submitted k seconds after the load starts), so the bench reads
it in advance and picks the moment the move starts acting (`Scenario`): the same offset from the
load's first submission in every round and mode (the flow's `start_at`), where long transfers run
on the moved channels and none starts close to the cut-over, so that a second of jitter in the
lab cannot change which transfers the move finds running. The figures, medians over the rounds:

* per-channel downtime, summed and the maximum, as the lab's score measures it (time with pending
  work while the channel is Inactive or no agent serves it), and the pipelined/full ratio of the
  sums (target <= 0.3, with both refinements);
* **the limit**: per channel, the least downtime any move could have once it goes Inactive
  when it did: the part of its drain (until the transfers running at that moment have ended,
  from the database's start times and durations) plus the agent hand-over at its fastest (an
  agent that waits for the lock takes it when the old one lets go: measured in each round's lab
  by a `service transfer-agents restart` of an agent the move does not touch) during which the
  channel had pending work, since the score counts only that time (`pending_within`, from the
  jobs' submission and start times); each mode's sum
  against the sum of its limits (target <= 1.15 for the pipelined move with both refinements),
  and per channel its drain, its actual hand-over (the old agent's DB session ended -> the new
  one's began) and the rest (SSH round trips, polls). A channel whose cut-over waited goes
  Inactive later: its limit counts from that moment, which is the point of waiting;
* jobs lost and agents ever serving twice (target 0 for both);
* the bench's site reads and writes the channel states in the database from handover's machine
  (`BENCH_DATABASE`: `database.channel_states_query` and `database.channel_set_statement`),
  as a site whose channel tool does nothing beyond that write may; every mode runs with them;
* orchestration overhead: the flow's wall time (less its hold until the start) over its remote
  commands and necessary waits along the plan's critical path, plus its snapshots.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from config.loader import load_site
from config.site import Site
from infra.lab.lab import Lab, derive_site_file
from infra.lab.settings import lab_settings
from infra.lab.workload import trace

ROOT = Path(__file__).resolve().parent.parent.parent
#: the pipelined move with both improvements against the full procedure, and its limit
DOWNTIME_RATIO_TARGET = 0.3
LIMIT_RATIO_TARGET = 1.15
OVERHEAD_TARGET = 1.2
#: how much later than its start a channel may go Inactive (the pipelined move's cut-over)
CUTOVER_WINDOW_S = 20.0
#: the variants measured, each: (mode, hot standby, cut-over window, the estimates' error)
VARIANTS: dict[str, tuple[str, bool, float, float]] = {
    "full": ("full", False, 0.0, 0.0),
    "pipelined_plain": ("pipelined", False, 0.0, 0.0),
    "pipelined": ("pipelined", True, CUTOVER_WINDOW_S, 0.0),
}
LABELS = {
    "full": "full (by hand)",
    "pipelined_plain": "pipelined, stop then start, all Inactive at once",
    "pipelined": "pipelined, hot standby + drain-aware cut-over (exact estimates)",
}
#: the pipelined move against its limit when the estimates of the transfers' ends are off by
#: up to this fraction (`--eta-error`); errors not listed are measured and reported only
ETA_LIMIT_TARGETS = {0.3: 1.3}


def eta_variant(error: float) -> str:
    """The name of the pipelined variant whose estimates are off by up to `error`."""
    return f"pipelined_eta{round(error * 100)}"


def variants(eta_errors: tuple[float, ...]) -> dict[str, tuple[str, bool, float, float]]:
    """The variants of one invocation: `VARIANTS`, and the pipelined move at each error."""
    out = dict(VARIANTS)
    for e in eta_errors:
        if e > 0:
            out[eta_variant(e)] = ("pipelined", True, CUTOVER_WINDOW_S, e)
            LABELS[eta_variant(e)] = (
                f"pipelined, hot standby + cut-over, estimates off by up to {e:.0%}"
            )
    return out


SOURCE, TARGET = "fts101", "fts102"
#: an agent the move does not touch, restarted to measure the fastest hand-over
CALIBRATION_AGENT = "glite-transfer-channel-agent-urlcopy-CERN-PIC"

#: a workload with mixed durations: most transfers take a second or two, a few take much longer
#: the bench site's channel reads and writes, one statement each from handover's machine
BENCH_DATABASE: dict[str, str] = {
    "channel_states_query": "SELECT name, state FROM channels",
    "channel_set_statement": "UPDATE channels SET state = :state WHERE name = :channel",
}

WORKLOAD: dict[str, Any] = {
    "jobs_per_second_per_channel": 1.0,
    "max_active_per_channel": 3,
    "lock_wait_s": 8.0,
    "tick_s": 0.1,
    "load_on_start": False,
    "transfers": {
        "short_s": [0.5, 2.0],
        "long_s": [10.0, 16.0],
        "long_fraction": 0.06,
        "seed": 2026,
    },
}

#: no long transfer of a moved channel may be submitted this close before or after the start
#: (the lab's jitter: a job starts up to a tick or two after its submission, the cut-over
#: commits a few hundred milliseconds after the flow starts acting)
GUARD_BEFORE_S, GUARD_AFTER_S = 1.5, 3.0


class Scenario(BaseModel):
    """When the move starts acting, as an offset from the load's first submission, and what it
    will find running (from the workload's stream)."""

    start_offset_s: float
    #: per moved channel, the long transfers in flight at the start: seconds they still need
    long_in_flight_s: dict[str, list[float]]


def pick_scenario(site: Site, channels: list[str], earliest_s: float) -> Scenario:
    """The first start at or after `earliest_s` (on a 0.25 s grid) at which at least two moved
    channels (or as many as can) have a long transfer in flight, and no long transfer of a moved
    channel is submitted within the guard around it.

    Raises:
        ValueError: no such moment within two minutes of load.
    """
    lab = lab_settings(site)
    rate = lab.jobs_per_second_per_channel
    horizon = earliest_s + 120.0
    n = int(horizon * rate) + 2
    longs: dict[str, list[tuple[float, float]]] = {}
    for ch in channels:
        lo = lab.transfers.profile(ch).long_s[0]
        longs[ch] = [(k / rate, d) for k, d in enumerate(trace(site, ch, n)) if d >= lo]

    def at(a: float) -> tuple[bool, dict[str, list[float]]]:
        guarded = all(
            not (a - GUARD_BEFORE_S <= t <= a + GUARD_AFTER_S) for v in longs.values() for t, _ in v
        )
        flight = {
            ch: [round(t + d - a, 2) for t, d in v if t < a - GUARD_BEFORE_S and t + d > a + 1.0]
            for ch, v in longs.items()
        }
        return guarded, {ch: r for ch, r in flight.items() if r}

    wanted = min(2, sum(1 for v in longs.values() if v))
    first_guarded = None
    a = earliest_s
    while a <= horizon:
        guarded, flight = at(a)
        if guarded and first_guarded is None:
            first_guarded = (a, flight)
        if guarded and len(flight) >= wanted:
            return Scenario(start_offset_s=a, long_in_flight_s=flight)
        a += 0.25
    if first_guarded is None:
        raise ValueError(f"no start within {horizon:.0f} s clear of long transfers")
    return Scenario(start_offset_s=first_guarded[0], long_in_flight_s=first_guarded[1])


def _db_epoch(lab: Lab, timeout_s: float = 30.0) -> dt.datetime:
    """The load's first submission (the database's clock), waited for."""
    import contextlib

    deadline = time.monotonic() + timeout_s
    with contextlib.closing(lab.db.connect()) as conn:
        while time.monotonic() < deadline:
            first = conn.run("SELECT extract(epoch FROM min(submitted_at)) FROM jobs")[0][0]
            if first is not None:
                return dt.datetime.fromtimestamp(float(first), dt.UTC)
            time.sleep(0.05)
    raise RuntimeError(f"the load generator submitted nothing within {timeout_s:.0f} s")


def _fastest_hand_over(lab: Lab) -> float:
    """Restart an agent the move does not touch: its new instance waits for the lock and takes
    it when the old one lets go; the gap the database saw is the fastest hand-over."""
    out = lab.exec(
        TARGET, ["service", "transfer-agents", "restart", "--instance", CALIBRATION_AGENT], 60
    )
    if out.returncode != 0:
        raise RuntimeError(f"the calibration restart failed: {out.stdout} {out.stderr}")
    gaps = lab.score().restart_gaps_s.get(CALIBRATION_AGENT) or []
    if not gaps:
        raise RuntimeError(f"the database saw no restart of {CALIBRATION_AGENT}")
    return float(gaps[-1])


def pending_within(intervals: list[tuple[float, float]], a: float, b: float) -> float:
    """How long within [a, b] at least one of the intervals (a job's wait: submitted ->
    started) was open: the time the lab's score can count as downtime there."""
    total, end = 0.0, a
    for lo, hi in sorted(intervals):
        lo, hi = max(lo, end), min(hi, b)
        if hi > lo:
            total += hi - lo
            end = hi
    return total


def _breakdown(
    lab: Lab, channels: dict[str, str], since: dt.datetime, fastest: float
) -> dict[str, dict[str, Any]]:
    """Per moved channel (channel -> agent): when it went Inactive and Active again, its drain
    (the transfers running when it went Inactive, until their end), its actual hand-over and
    its limit: the time with pending work (what the score counts) from going Inactive until the
    drain's end plus the fastest hand-over."""
    import contextlib

    out: dict[str, dict[str, Any]] = {}
    with contextlib.closing(lab.db.connect()) as conn:
        for ch, agent in channels.items():
            rows = conn.run(
                "SELECT state, extract(epoch FROM at) FROM channel_history WHERE channel = :c "
                "AND at >= :s ORDER BY at",
                c=ch,
                s=since,
            )
            t0 = next((float(t) for st, t in rows if st == "Inactive"), None)
            t1 = next((float(t) for st, t in rows if st == "Active" and t0 and t > t0), None)
            if t0 is None:
                out[ch] = {"inactive_at": None}
                continue
            end = conn.run(
                "SELECT max(extract(epoch FROM started_at) + duration_s) FROM jobs WHERE "
                "channel = :c AND started_at IS NOT NULL AND extract(epoch FROM started_at) <= :t",
                c=ch,
                t=t0,
            )[0][0]
            drain = max(0.0, float(end) - t0) if end is not None else 0.0
            sess = conn.run(
                "SELECT host, extract(epoch FROM started_at), extract(epoch FROM ended_at) FROM "
                "agent_sessions WHERE agent = :a ORDER BY started_at",  # this round's lab only
                a=agent,
            )
            old_end = max(
                (float(e) for h, _, e in sess if h == SOURCE and e is not None), default=None
            )
            new_start = min(
                (float(b) for h, b, _ in sess if h == TARGET and old_end and float(b) >= old_end),
                default=None,
            )
            ideal_end = t0 + drain + fastest
            waits = conn.run(
                "SELECT extract(epoch FROM submitted_at), extract(epoch FROM coalesce(started_at, "
                "clock_timestamp())) FROM jobs WHERE channel = :c AND "
                "extract(epoch FROM submitted_at) < :b AND (started_at IS NULL OR "
                "extract(epoch FROM started_at) > :a)",
                c=ch,
                a=t0,
                b=ideal_end,
            )
            limit = pending_within([(float(x), float(y)) for x, y in waits], t0, ideal_end)
            out[ch] = {
                "inactive_at": t0,
                "active_at": t1,
                "limit_s": round(limit, 3),
                "drain_s": round(drain, 3),
                "hand_over_s": (round(new_start - old_end, 3) if old_end and new_start else None),
            }
    return out


def _one(
    site_file: Path,
    variant: tuple[str, str, bool, float],
    scenario: Scenario,
    channels: dict[str, str],
) -> dict[str, Any]:
    from flows.clean_move import CleanMoveResult, clean_move

    name, mode, hot, window = variant
    lab = Lab.from_file(site_file)
    lab.up()
    try:
        lab.set_load(on=True)
        epoch = _db_epoch(lab)
        fastest = _fastest_hand_over(lab)
        lab.score(reset=True)
        start_at = epoch + dt.timedelta(seconds=scenario.start_offset_s)
        state = clean_move(
            str(site_file),
            SOURCE,
            TARGET,
            mode=mode,
            pause_for_approval=False,
            start_at=start_at,
            cutover_window_s=window,
            hot_standby=hot,
            return_state=True,
        )
        result = state.result(raise_on_failure=False)
        if not isinstance(result, CleanMoveResult) or result.status != "completed":
            detail = "; ".join(
                s.sentence for s in getattr(result, "steps", []) if s.outcome == "failed"
            )
            summary = getattr(result, "summary", result)
            raise RuntimeError(f"{name} move did not complete: {summary}; {detail}")
        time.sleep(0.5)  # one more score tick after the last channel is Active
        score = lab.score()
        per = _breakdown(lab, channels, start_at - dt.timedelta(seconds=5), fastest)
    finally:
        lab.down()
        lab.remove_state()
    assert result.timing is not None
    rows = {}
    for ch, agent in channels.items():
        b = per.get(ch, {})
        # what the channel's steps after the cut-over took (shared steps count for each)
        steps: dict[str, float] = {}
        said = [
            rec.sentence
            for rec in result.steps
            if rec.verb in ("await-cutover", "await-serving")
            and (ch in rec.channels or agent in rec.agents)
        ]
        for rec in result.steps:
            if rec.verb == "await-cutover" and ch in rec.channels:
                steps["cutover-waited"] = rec.measures.get("waited_s", 0.0)
            elif rec.verb != "set-inactive" and (ch in rec.channels or agent in rec.agents):
                took = (rec.ended_at - rec.started_at).total_seconds()
                steps[rec.verb] = round(steps.get(rec.verb, 0.0) + took, 3)
                if rec.verb == "hand-over" and "active_after_let_go_s" in rec.measures:
                    # its DB session gone -> its channel written Active (about 10-40 ms)
                    steps["active-after-let-go"] = rec.measures["active_after_let_go_s"]
                if rec.verb == "wait-drained" and b.get("inactive_at"):
                    # from the last transfer's end to the move knowing it
                    seen = rec.ended_at.timestamp() - b["inactive_at"] - b["drain_s"]
                    steps["drain-noticed-after"] = round(max(0.0, seen), 3)
        down = float(score.downtime_s.get(ch, 0.0))
        limit = b.get("limit_s", 0.0)
        hand = b.get("hand_over_s")
        rows[ch] = {
            "downtime_s": round(down, 2),
            "limit_s": round(limit, 2),
            "drain_s": b.get("drain_s"),
            "hand_over_s": hand,
            "other_s": round(down - b.get("drain_s", 0.0) - (hand or 0.0), 2),
            "steps_s": steps,
            "said": said,
            "inactive_after_start_s": (
                round(b["inactive_at"] - start_at.timestamp(), 3) if b.get("inactive_at") else None
            ),
        }
    total = sum(r["downtime_s"] for r in rows.values())
    limit = sum(r["limit_s"] for r in rows.values())
    return {
        "variant": name,
        "mode": mode,
        "downtime_sum_s": round(total, 2),
        "downtime_max_s": round(max((r["downtime_s"] for r in rows.values()), default=0.0), 2),
        "limit_sum_s": round(limit, 2),
        "to_limit": round(total / limit, 3) if limit else None,
        "fastest_hand_over_s": round(fastest, 3),
        "held_s": result.timing.held_s,
        "late": result.timing.held_s <= 0,
        "channels": rows,
        "flow_downtime_sum_s": result.downtime_total_s,
        "jobs_lost": score.jobs_lost,
        "agents_running_twice": len(score.agents_running_twice),
        "flow_wall_s": result.timing.flow_wall_s,
        "critical_path_s": result.timing.critical_path_s,
        "overhead_ratio": result.timing.overhead_ratio,
    }


def bench_clean_move(
    *,
    rounds: int = 3,
    warmup_s: float = 6.0,
    eta_errors: tuple[float, ...] = (),
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Run `rounds` moves of each variant (`variants`: with the pipelined move at each of
    `eta_errors` too) on the same workload and scenario (the start no earlier than `warmup_s`
    after the load's first submission); return medians and ratios."""
    from rich.console import Console

    from infra.run import configure_api

    configure_api(Console(stderr=True))
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-"))
    chosen = variants(eta_errors)
    # one site per error of the estimates: the same lab, workload and scenario otherwise
    site_files = {
        e: derive_site_file(
            ROOT / "config" / "sites" / "lab.yaml",
            tmp / f"bench-eta{round(e * 100)}.yaml",
            name="benchmove",
            octet=250,
            db_port=20250,  # below the ephemeral port range, as the tests' labs
            state_dir=Path(f"/var/tmp/handover-lab/bench-{os.getpid()}"),
            lab={**WORKLOAD, "transfers": {**WORKLOAD["transfers"], "eta_error": e}},
            procedures={"clean-move": {"poll_interval_s": 0.1, "cutover_drain_s": 2.0}},
            database=BENCH_DATABASE,
        )
        for e in sorted({v[3] for v in chosen.values()})
    }
    site_file = site_files[0.0]
    site = load_site(site_file)
    channels = {a.channel: a.name for a in site.agents_on(SOURCE) if a.channel}
    scenario = pick_scenario(site, list(channels), warmup_s)
    progress(
        f"the move starts acting {scenario.start_offset_s:.2f} s after the load's first "
        "submission; long transfers in flight then (s still needed): "
        + (
            ", ".join(f"{c} {v}" for c, v in scenario.long_in_flight_s.items())
            or "none on the moved channels"
        )
    )
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in chosen}
    for i in range(rounds):
        for mode, (kind, hot, window, error) in chosen.items():
            progress(f"round {i + 1}/{rounds}: {LABELS[mode]}")
            one = _one(site_files[error], (mode, kind, hot, window), scenario, channels)
            progress(
                f"  downtime sum {one['downtime_sum_s']:.2f} s, limit {one['limit_sum_s']:.2f} s"
                + ("; LATE: the flow reached the start after it" if one["late"] else "")
            )
            runs[mode].append(one)

    def med(mode: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs[mode])), 3)

    out: dict[str, Any] = {
        "rounds": rounds,
        "warmup_s": warmup_s,
        "workload": WORKLOAD,
        "scenario": scenario.model_dump(),
    }
    for mode in runs:
        out[mode] = {
            k: med(mode, k)
            for k in (
                "downtime_sum_s",
                "downtime_max_s",
                "limit_sum_s",
                "to_limit",
                "fastest_hand_over_s",
                "flow_downtime_sum_s",
                "flow_wall_s",
                "critical_path_s",
                "overhead_ratio",
            )
        }
        out[mode]["downtime_sum_spread_s"] = [
            min(r["downtime_sum_s"] for r in runs[mode]),
            max(r["downtime_sum_s"] for r in runs[mode]),
        ]
        out[mode]["jobs_lost"] = sum(r["jobs_lost"] for r in runs[mode])
        out[mode]["agents_running_twice"] = sum(r["agents_running_twice"] for r in runs[mode])
        out[mode]["late_rounds"] = sum(1 for r in runs[mode] if r["late"])
        out[mode]["channels"] = {
            ch: {
                k: _median([r["channels"][ch][k] for r in runs[mode]])
                for k in ("downtime_s", "limit_s", "drain_s", "hand_over_s", "other_s")
            }
            for ch in channels
        }
    full, pipe = out["full"]["downtime_sum_s"], out["pipelined"]["downtime_sum_s"]
    out["downtime_ratio"] = round(pipe / full, 3) if full else None
    plain = out["pipelined_plain"]["downtime_sum_s"]
    out["plain_downtime_ratio"] = round(plain / full, 3) if full else None
    out["runs"] = runs
    exact = out["pipelined"]["downtime_sum_s"]
    out["eta_errors"] = {
        eta_variant(e): {
            "error": e,
            "to_limit": out[eta_variant(e)]["to_limit"],
            # what the wrong estimates cost: against the same move with exact ones, and the full
            "to_exact": round(out[eta_variant(e)]["downtime_sum_s"] / exact, 2) if exact else None,
            "to_full": round(out[eta_variant(e)]["downtime_sum_s"] / full, 3) if full else None,
        }
        for e in eta_errors
        if e > 0
    }
    ok = (
        out["downtime_ratio"] is not None
        and out["downtime_ratio"] <= DOWNTIME_RATIO_TARGET
        and out["pipelined"]["to_limit"] <= LIMIT_RATIO_TARGET
        and all(
            out[eta_variant(e)]["to_limit"] <= t
            for e, t in ETA_LIMIT_TARGETS.items()
            if eta_variant(e) in out
        )
        and all(out[m]["jobs_lost"] == 0 for m in runs)
        and all(out[m]["agents_running_twice"] == 0 for m in runs)
        and all(out[m]["overhead_ratio"] <= OVERHEAD_TARGET for m in runs)
    )
    out["ok"] = ok

    def lo_hi(m: str) -> str:
        a, b = out[m]["downtime_sum_spread_s"]
        return f"{a:.2f}-{b:.2f}"

    out["summary"] = [
        f"clean move {SOURCE} -> {TARGET}, {rounds} rounds per variant, same workload, acting "
        f"{scenario.start_offset_s:.2f} s after the load's first submission (medians):",
        *(
            f"  {m:15} downtime sum {out[m]['downtime_sum_s']:6.2f} s ({lo_hi(m)}), max "
            f"{out[m]['downtime_max_s']:6.2f} s; limit {out[m]['limit_sum_s']:6.2f} s: "
            f"{out[m]['to_limit']:.2f}x the limit; jobs lost {out[m]['jobs_lost']}, agents "
            f"serving twice {out[m]['agents_running_twice']}; flow {out[m]['flow_wall_s']:5.2f} s "
            f"over critical path {out[m]['critical_path_s']:5.2f} s: overhead "
            f"{out[m]['overhead_ratio']:.3f} (target <= {OVERHEAD_TARGET})"
            for m in chosen
        ),
        *(f"    {m}: {LABELS[m]}" for m in chosen),
        *(
            f"  pipelined with estimates off by up to {e:.0%} / its limit: "
            f"{out[eta_variant(e)]['to_limit']}"
            + (f" (target <= {ETA_LIMIT_TARGETS[e]})" if e in ETA_LIMIT_TARGETS else "")
            + f"; / exact estimates {out['eta_errors'][eta_variant(e)]['to_exact']}; / full "
            f"{out['eta_errors'][eta_variant(e)]['to_full']}"
            for e in eta_errors
            if e > 0
        ),
        f"  pipelined / full total downtime: {out['downtime_ratio']} "
        f"(target <= {DOWNTIME_RATIO_TARGET}); pipelined / its limit: "
        f"{out['pipelined']['to_limit']} (target <= {LIMIT_RATIO_TARGET}); "
        f"pipelined_plain / full: {out['plain_downtime_ratio']}",
        f"  fastest hand-over (an agent restarted, the new instance waiting for the lock): "
        f"{out['pipelined']['fastest_hand_over_s']:.3f} s",
        "  per channel (pipelined, medians): downtime = drain + hand-over + the rest",
        *(
            f"    {ch:12} {c['downtime_s']:6.2f} s = drain {c['drain_s']:6.2f} + hand-over "
            f"{c['hand_over_s'] if c['hand_over_s'] is not None else float('nan'):5.2f} + rest "
            f"{c['other_s']:5.2f}; limit {c['limit_s']:6.2f} s"
            for ch, c in out["pipelined"]["channels"].items()
        ),
        "  per channel (pipelined, first round): its steps after the cut-over, seconds",
        *(
            f"    {ch:12} "
            + ", ".join(
                f"{v} {t:.3f}" for v, t in runs["pipelined"][0]["channels"][ch]["steps_s"].items()
            )
            for ch in channels
        ),
    ]
    return out


def _median(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return round(float(statistics.median(known)), 3) if known else None
