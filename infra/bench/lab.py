"""`handover bench lab`: how long the lab takes to come up and go down, and how much memory it uses.

Targets (on a 2-core machine): `lab up` under 30 s and `lab down` under 10 s (medians), the whole
lab under 1.5 GiB. Memory is the sum of the proportional set size (PSS) of every lab process:
the hosts' processes, PostgreSQL and the lab daemon.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.lab.lab import Lab

UP_TARGET_S = 30.0
DOWN_TARGET_S = 10.0
MEMORY_TARGET_MIB = 1536.0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def lab_memory_mib(lab: Lab) -> tuple[float, int]:
    """PSS of every process of the running lab, in MiB, and how many processes that is."""
    rec = lab.record()
    pids = {p.pid for plist in lab.host_processes(rec).values() for p in plist}
    if rec.get("pg_pid"):
        pids.update(_descendants(int(rec["pg_pid"])))
    if rec.get("labd_pid"):
        pids.add(int(rec["labd_pid"]))
    return sum(_pss_kib(p) for p in pids) / 1024, len(pids)


def _cycle(lab: Lab, hosts: int | None, settle_s: float) -> dict[str, float]:
    t0 = time.monotonic()
    lab.up(hosts=hosts)
    up_s = time.monotonic() - t0
    time.sleep(settle_s)
    mem, nproc = lab_memory_mib(lab)
    t1 = time.monotonic()
    report = lab.down()
    down_s = time.monotonic() - t1
    if report["leftovers"]:
        raise RuntimeError(f"lab down left processes running: {report['leftovers']}")
    return {"up_s": up_s, "down_s": down_s, "memory_mib": mem, "processes": nproc}


def bench_lab(
    site_file: str,
    *,
    rounds: int = 5,
    hosts: int | None = None,
    settle_s: float = 3.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Measure `rounds` up/down cycles of the site's lab (and one of N hosts when asked).

    The lab must be down when this starts; it is down again when this returns.
    """
    lab = Lab.from_file(site_file)
    if lab.record():
        raise RuntimeError("the lab is up; run `handover lab down` before benchmarking it")
    runs = []
    for i in range(rounds):
        progress(f"round {i + 1}/{rounds}")
        runs.append(_cycle(lab, None, settle_s))
    med = {k: statistics.median(r[k] for r in runs) for k in ("up_s", "down_s", "memory_mib")}
    result: dict[str, Any] = {
        "rounds": rounds,
        "hosts": len(lab.base_site.hosts),
        "up_s_median": round(med["up_s"], 2),
        "down_s_median": round(med["down_s"], 2),
        "memory_mib_median": round(med["memory_mib"], 1),
        "processes": int(runs[-1]["processes"]),
        "up_vs_target": round(med["up_s"] / UP_TARGET_S, 3),
        "down_vs_target": round(med["down_s"] / DOWN_TARGET_S, 3),
        "memory_vs_target": round(med["memory_mib"] / MEMORY_TARGET_MIB, 3),
        "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs],
    }
    ok = med["up_s"] <= UP_TARGET_S and med["down_s"] <= DOWN_TARGET_S
    ok = ok and med["memory_mib"] <= MEMORY_TARGET_MIB
    summary = [
        f"lab of {result['hosts']} hosts, {rounds} rounds (medians):",
        f"  up   {result['up_s_median']:6.2f} s  (target {UP_TARGET_S:g} s, ratio "
        f"{result['up_vs_target']:.3f})",
        f"  down {result['down_s_median']:6.2f} s  (target {DOWN_TARGET_S:g} s, ratio "
        f"{result['down_vs_target']:.3f})",
        f"  memory {result['memory_mib_median']:6.1f} MiB PSS over {result['processes']} "
        f"processes (target {MEMORY_TARGET_MIB:g} MiB, ratio {result['memory_vs_target']:.3f})",
    ]
    if hosts:
        progress(f"scale run: {hosts} hosts")
        big = _cycle(lab, hosts, settle_s)
        result["scale"] = {"hosts": hosts, **{k: round(v, 2) for k, v in big.items()}}
        summary.append(
            f"  scale: {hosts} hosts up in {big['up_s']:.2f} s, down in {big['down_s']:.2f} s, "
            f"{big['memory_mib']:.1f} MiB PSS over {int(big['processes'])} processes"
        )
    result["ok"] = ok
    result["summary"] = summary
    return result
