"""`handover bench scale`: what reading a site costs as it grows (issue: snapshots that scale).

For the lab's own 4 hosts and a generated lab of 50 (`handover lab up --hosts 50`), each on a
fresh bench lab, `rounds` times each, side by side in one run:

* **snapshot, cold**: `snapshot_site` with a new SSH pool: every connection opened (up to the
  site's `ssh.parallelism` at once), then one round trip per host;
* **snapshot, warm**: the same with the connections already open (what a flow's later
  snapshots and the exporter pay);
* **one command per round trip, warm**: the same reads sent as separate commands (the way
  snapshots were read before they were batched), for comparison;
* **sensor reading, warm**: `read_sensors`, what `handover exporter` does every interval;
* **empty round trip, warm**: one `true` per host, the same parallelism: the floor any reading
  of every host pays on this machine (SSH channels, sshd's session, a shell);
* **snapshot, warm, 4x the parallelism**: whether opening more at once helps;
* **snapshot, warm, channel states in one query**: with the site's
  `database.channel_states_query`, the states read with one database query from here, the hosts
  asked for their process tables and `.disabled` only.

Then, on the large lab, ten emergency moves at once over two workers against one move alone
(`infra.bench.concurrent_moves`; `services=0` skips them).

It prints the median and the spread of each, and the 50-host / 4-host ratio of each median
(the target: a snapshot of 50 hosts within 2x the 4-host one). The lab's hosts all run on this
machine: every remote command (sshd, the shell, `ps`, the lab's Python init scripts) costs this
machine's CPU too, so the ratio also says how far 2 cores carry 50 hosts.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infra.bench.alert import spread
from infra.lab.lab import Lab, derive_site_file

ROOT = Path(__file__).resolve().parent.parent.parent
OCTET = 243

#: the large lab's snapshot against the small one's, at most (50 hosts against 4)
SCALE_TARGET = 2.0


def _separate_commands(shell: Any) -> None:
    """The snapshot's reads, one command per round trip (for comparison only)."""
    site = shell.site
    names = [h.name for h in site.hosts]

    def host(name: str) -> None:
        shell.run(name, "list_processes")
        shell.run_argv(name, site.commands.disabled_argv("read"))

    with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(names))) as ex:
        list(ex.map(host, names))
    with ThreadPoolExecutor(max_workers=min(site.ssh.parallelism, len(site.channels))) as ex:
        list(ex.map(lambda c: shell.run(names[0], "channel_state", channel=c), site.channels))


def _empty_round_trips(shell: Any) -> None:
    """One round trip per host that reads nothing (`true`): what the SSH sessions cost alone."""
    names = [h.name for h in shell.site.hosts]
    with ThreadPoolExecutor(max_workers=min(shell.site.ssh.parallelism, len(names))) as ex:
        list(ex.map(lambda n: shell.run_argv(n, ["true"]), names))


def _measure(
    site_file: Path,
    hosts: int | None,
    rounds: int,
    say: Callable[[str], None],
    moves: dict[str, int] | None = None,
) -> Any:
    from tasks.remote import SiteShell
    from tasks.sensors import read_sensors
    from tasks.site_state import snapshot_site

    lab = Lab.from_file(site_file)
    lab.up(hosts=hosts)
    try:
        site = lab.site
        n = len(site.hosts)
        say(f"{n} hosts: lab up; {rounds} rounds")

        def timed(fn: Callable[[], Any]) -> float:
            t0 = time.monotonic()
            fn()
            return time.monotonic() - t0

        cold, warm, separate, sensors, empty, wide, query = [], [], [], [], [], [], []
        for _ in range(rounds):
            with SiteShell(site) as shell:
                cold.append(timed(lambda: snapshot_site(shell)))
        with SiteShell(site) as shell:
            snap = snapshot_site(shell)
            unreachable = [h.host for h in snap.hosts if not h.reachable]
            if unreachable or len(snap.channels) != len(site.channels):
                raise RuntimeError(
                    f"the bench lab is not whole: unreachable {unreachable}, "
                    f"channels read {sorted(snap.channels)}"
                )
            read_sensors(shell, 120)
            for _ in range(rounds):
                warm.append(timed(lambda: snapshot_site(shell)))
                separate.append(timed(lambda: _separate_commands(shell)))
                sensors.append(timed(lambda: read_sensors(shell, 120)))
                empty.append(timed(lambda: _empty_round_trips(shell)))
        # the same snapshot with 4x the site's parallelism: does opening more at once help?
        wider = site.model_copy(
            update={"ssh": site.ssh.model_copy(update={"parallelism": 4 * site.ssh.parallelism})}
        )
        with SiteShell(wider) as shell:
            snapshot_site(shell)
            for _ in range(rounds):
                wide.append(timed(lambda: snapshot_site(shell)))
        # the channel states in one query of the database (`database.channel_states_query`)
        assert site.database is not None
        one_query = site.model_copy(
            update={
                "database": site.database.model_copy(
                    update={"channel_states_query": "SELECT name, state FROM channels"}
                )
            }
        )
        with SiteShell(one_query) as shell:
            snap = snapshot_site(shell)
            if len(snap.channels) != len(site.channels):
                raise RuntimeError(f"the one query read {sorted(snap.channels)}")
            for _ in range(rounds):
                query.append(timed(lambda: snapshot_site(shell)))
        row: dict[str, Any] = {
            "hosts": n,
            "channels": len(site.channels),
            "parallelism": site.ssh.parallelism,
            "snapshot_cold_s": spread(cold),
            "snapshot_warm_s": spread(warm),
            "separate_commands_warm_s": spread(separate),
            "sensor_reading_warm_s": spread(sensors),
            "empty_round_trip_warm_s": spread(empty),
            "snapshot_warm_4x_parallelism_s": spread(wide),
            "snapshot_warm_channel_states_in_one_query_s": spread(query),
        }
        say(
            f"{n} hosts: snapshot cold p50 {row['snapshot_cold_s']['p50']:.2f} s, warm "
            f"{row['snapshot_warm_s']['p50']:.2f} s (one command per round trip "
            f"{row['separate_commands_warm_s']['p50']:.2f} s), sensor reading "
            f"{row['sensor_reading_warm_s']['p50']:.2f} s"
        )
        if moves:  # last: it crashes hosts
            from infra.bench.concurrent_moves import measure_moves

            row["emergency_moves"] = measure_moves(lab, **moves, say=say)
        return row
    finally:
        lab.down()
        lab.remove_state()


def bench_scale(
    *,
    rounds: int = 5,
    sizes: tuple[int | None, int | None] = (None, 50),
    services: int = 10,
    solo: int = 3,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The figures (module docstring); `sizes`: the small lab (None: the site's own) and the
    large one; on the large one, `services` emergency moves at once over two workers against
    `solo` moves alone (`infra.bench.concurrent_moves`; 0 services: none)."""
    tmp = Path(tempfile.mkdtemp(prefix="handover-bench-scale-"))
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        tmp / "benchscale.yaml",
        name="benchscale",
        octet=OCTET,
        db_port=20000 + OCTET,
        state_dir=Path(f"/var/tmp/handover-lab/bench-scale-{os.getpid()}"),
    )
    small = _measure(site_file, sizes[0], rounds, progress)
    moves = {"services": services, "solo": solo} if services else None
    large = _measure(site_file, sizes[1], rounds, progress, moves)
    keys = [k for k in small if k.endswith("_s")]
    summary_moves: list[str] = []
    moved = large.get("emergency_moves")
    if moved:
        summary_moves = [
            f"  {moved['services']} emergency moves at once ({moved['services']} services of "
            f"{moved['hosts_per_service']} hosts, {moved['workers']} workers, Prefect on "
            f"{moved['database']}): makespan {moved['at_once_makespan_s']:.2f} s against one "
            f"move alone {moved['one_move_s']['p50']:.2f} s "
            f"({moved['one_move_s']['min']:.2f}-{moved['one_move_s']['max']:.2f}), ratio "
            f"{moved['makespan_to_one_move']:.2f}; runs per worker {moved['runs_per_worker']}; "
            + (
                "all converged"
                if moved["converged"]
                else "NOT converged: " + "; ".join(moved["problems"])
            ),
        ]
    ratios = {k: round(large[k]["p50"] / small[k]["p50"], 2) for k in keys}
    out: dict[str, Any] = {
        "rounds": rounds,
        "small": small,
        "large": large,
        "ratio_large_to_small": ratios,
        "summary": [
            f"reading the site, {small['hosts']} hosts vs {large['hosts']} (p50 over {rounds} "
            f"rounds, min-max; ssh.parallelism {small['parallelism']}):",
            *(
                f"  {k.removesuffix('_s').replace('_', ' ')}: {small[k]['p50']:.2f} s "
                f"({small[k]['min']:.2f}-{small[k]['max']:.2f}) vs {large[k]['p50']:.2f} s "
                f"({large[k]['min']:.2f}-{large[k]['max']:.2f}), ratio {ratios[k]:.2f}"
                for k in keys
            ),
            f"  the {large['hosts']}-host snapshot (warm) against the {small['hosts']}-host one: "
            f"{ratios['snapshot_warm_s']:.2f}x (target {SCALE_TARGET:g}x); the empty round "
            "trips alone (SSH sessions and channels, no reading) "
            f"take {large['empty_round_trip_warm_s']['p50']:.2f} s at {large['hosts']} hosts, "
            f"{large['empty_round_trip_warm_s']['p50'] / small['snapshot_warm_s']['p50']:.1f}x "
            "the 4-host snapshot",
            "  the same with the channel states in one query: "
            f"{ratios['snapshot_warm_channel_states_in_one_query_s']:.2f}x "
            f"(target {SCALE_TARGET:g}x)",
            *summary_moves,
        ],
        # the moves converge, and the best snapshot of the large lab is within its target of
        # the small one's (this 2-core machine runs all 50 hosts' commands: it misses it)
        "ok": (not moved or moved["converged"])
        and ratios["snapshot_warm_channel_states_in_one_query_s"] <= SCALE_TARGET,
    }
    return out
