"""`handover bench clean-move`: seed 000's full procedure against the pipelined mode.

Both run on the same lab workload: every round starts a fresh bench lab (its own addresses, port
and state directory, so an operator's lab is untouched) whose load generator draws transfer
durations from the same seed, lets transfers run for a warm-up, then moves every agent of fts101
to fts102 in one mode. The figures, medians over the rounds:

* per-channel downtime, summed and the maximum, as the lab's score measures it (time with pending
  work while the channel is Inactive or no agent serves it), and the pipelined/full ratio of the
  sums (target <= 0.5 on a workload with mixed transfer durations);
* jobs lost (target 0 for both);
* orchestration overhead: the flow's wall time over its remote commands and necessary waits along
  the plan's critical path, plus its snapshots (target <= 1.2).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.lab.lab import Lab, derive_site_file

ROOT = Path(__file__).resolve().parent.parent.parent
DOWNTIME_RATIO_TARGET = 0.5
OVERHEAD_TARGET = 1.2

#: a workload with mixed durations: most transfers take a second or two, a few take much longer
WORKLOAD: dict[str, Any] = {
    "jobs_per_second_per_channel": 1.0,
    "max_active_per_channel": 3,
    "lock_wait_s": 8.0,
    "tick_s": 0.1,
    "transfers": {
        "short_s": [0.5, 2.0],
        "long_s": [10.0, 16.0],
        "long_fraction": 0.06,
        "seed": 2026,
    },
}


def _one(site_file: Path, mode: str, warmup_s: float) -> dict[str, Any]:
    from flows.clean_move import CleanMoveResult, clean_move

    lab = Lab.from_file(site_file)
    lab.up()
    try:
        time.sleep(warmup_s)
        lab.score(reset=True)
        state = clean_move(
            str(site_file),
            "fts101",
            "fts102",
            mode=mode,
            pause_for_approval=False,
            return_state=True,
        )
        result = state.result(raise_on_failure=False)
        if not isinstance(result, CleanMoveResult) or result.status != "completed":
            detail = "; ".join(
                s.sentence for s in getattr(result, "steps", []) if s.outcome == "failed"
            )
            summary = getattr(result, "summary", result)
            raise RuntimeError(f"{mode} move did not complete: {summary}; {detail}")
        time.sleep(0.5)  # one more score tick after the last channel is Active
        score = lab.score()
    finally:
        lab.down()
        lab.remove_state()
    moved = {a.channel for a in result.agents if a.channel}
    lab_down = {c: s for c, s in score.downtime_s.items() if c in moved}
    assert result.timing is not None
    return {
        "mode": mode,
        "downtime_sum_s": round(sum(lab_down.values()), 2),
        "downtime_max_s": round(max(lab_down.values(), default=0.0), 2),
        "flow_downtime_sum_s": result.downtime_total_s,
        "jobs_lost": score.jobs_lost,
        "agents_running_twice": len(score.agents_running_twice),
        "flow_wall_s": result.timing.flow_wall_s,
        "critical_path_s": result.timing.critical_path_s,
        "overhead_ratio": result.timing.overhead_ratio,
    }


def bench_clean_move(
    *, rounds: int = 3, warmup_s: float = 6.0, progress: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    """Run `rounds` full and pipelined moves on the same workload; return medians and ratios."""
    from rich.console import Console

    from infra.run import configure_api

    configure_api(Console(stderr=True))
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-"))
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "bench.yaml",
        name="benchmove",
        octet=250,
        db_port=20250,  # below the ephemeral port range, as the tests' labs
        state_dir=Path(f"/var/tmp/handover-lab/bench-{os.getpid()}"),
        lab=WORKLOAD,
        procedures={"clean-move": {"poll_interval_s": 0.25}},
    )
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "pipelined": []}
    for i in range(rounds):
        for mode in ("full", "pipelined"):
            progress(f"round {i + 1}/{rounds}: {mode}")
            runs[mode].append(_one(site_file, mode, warmup_s))

    def med(mode: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs[mode])), 3)

    out: dict[str, Any] = {"rounds": rounds, "warmup_s": warmup_s, "workload": WORKLOAD}
    for mode in runs:
        out[mode] = {
            k: med(mode, k)
            for k in (
                "downtime_sum_s",
                "downtime_max_s",
                "flow_downtime_sum_s",
                "flow_wall_s",
                "critical_path_s",
                "overhead_ratio",
            )
        }
        out[mode]["jobs_lost"] = sum(r["jobs_lost"] for r in runs[mode])
        out[mode]["agents_running_twice"] = sum(r["agents_running_twice"] for r in runs[mode])
    full, pipe = out["full"]["downtime_sum_s"], out["pipelined"]["downtime_sum_s"]
    out["downtime_ratio"] = round(pipe / full, 3) if full else None
    out["runs"] = runs
    ok = (
        out["downtime_ratio"] is not None
        and out["downtime_ratio"] <= DOWNTIME_RATIO_TARGET
        and all(out[m]["jobs_lost"] == 0 for m in runs)
        and all(out[m]["overhead_ratio"] <= OVERHEAD_TARGET for m in runs)
    )
    out["ok"] = ok
    out["summary"] = [
        f"clean move fts101 -> fts102, {rounds} rounds per mode, same workload (medians):",
        *(
            f"  {m:9} downtime sum {out[m]['downtime_sum_s']:6.2f} s, max "
            f"{out[m]['downtime_max_s']:6.2f} s; jobs lost {out[m]['jobs_lost']}; flow "
            f"{out[m]['flow_wall_s']:5.2f} s over critical path {out[m]['critical_path_s']:5.2f} s:"
            f" overhead {out[m]['overhead_ratio']:.3f} (target <= {OVERHEAD_TARGET})"
            for m in ("full", "pipelined")
        ),
        f"  pipelined / full total downtime: {out['downtime_ratio']} "
        f"(target <= {DOWNTIME_RATIO_TARGET})",
    ]
    return out
