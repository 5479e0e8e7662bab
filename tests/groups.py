"""How `make test` splits the suite into groups that run at once (`tests/run-groups`).

Modules are the unit of the split: a module's lab, stack and servers are module fixtures, so
splitting a module would start them twice. The split is the longest-first greedy one over the
durations recorded in `tests/durations.json` (`make durations` refreshes them): each module, the
longest first, goes to the group that has the least work so far. Modules that start the
machine's one Pacemaker cluster are placed as one: two clusters cannot run at once.

Everything here is pure, so every pytest process of a run computes the same split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

#: the recorded durations: module file name -> seconds (setup, call and teardown of its tests)
DURATIONS_FILE = Path(__file__).resolve().parent / "durations.json"
#: the guess for a module nobody has timed yet, per test
UNTIMED_S_PER_TEST = 2.0


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    """The recorded durations, or none when the file is absent.

    Raises:
        ValueError: the file is not a JSON object of module names to seconds.
    """
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of module file names to seconds")
    return {k: float(v) for k, v in data.items()}


def split(
    tests_per_module: Mapping[str, int],
    durations: Mapping[str, float],
    groups: int,
    together: Iterable[str] = (),
) -> list[list[str]]:
    """The modules of each group, longest first within a group.

    Args:
        tests_per_module: every module to place, with how many of its tests run (a module
            nobody has timed is guessed from this count).
        durations: the recorded seconds of each module.
        groups: how many groups run at once (at least 1).
        together: modules that must share a group (they use one machine-wide resource).

    Returns:
        `groups` lists of module names; every module is in exactly one.
    """
    if groups < 1:
        raise ValueError(f"groups={groups}: need at least one group")

    def cost(module: str) -> float:
        return durations.get(module, UNTIMED_S_PER_TEST * tests_per_module[module])

    bound = sorted(m for m in set(together) if m in tests_per_module)
    # the bound modules travel as one unit, named by their first
    units: dict[str, list[str]] = {m: [m] for m in tests_per_module if m not in bound}
    if bound:
        units[bound[0]] = bound
    load = [0.0] * groups
    out: list[list[str]] = [[] for _ in range(groups)]
    by_cost = sorted(units.values(), key=lambda ms: (-sum(cost(m) for m in ms), ms[0]))
    for unit in by_cost:
        i = min(range(groups), key=lambda g: (load[g], g))
        out[i] += unit
        load[i] += sum(cost(m) for m in unit)
    return [sorted(ms, key=lambda m: (-cost(m), m)) for ms in out]


def expected_seconds(modules: Iterable[str], durations: Mapping[str, float]) -> float:
    """The recorded time of `modules` together (untimed ones count zero)."""
    return sum(durations.get(m, 0.0) for m in modules)


def merge(measured: Iterable[Path], path: Path = DURATIONS_FILE) -> dict[str, float]:
    """Write the durations measured by a run's groups (each a JSON object like the recorded
    file) over the recorded ones, and return what was written. A module the run did not time
    keeps its recorded value."""
    out = load_durations(path)
    for file in measured:
        out.update(load_durations(file))
    path.write_text(json.dumps({k: round(v, 1) for k, v in sorted(out.items())}, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.groups --merge FILE...`` (run-groups); ``python -m tests.groups N``
    prints the split of the recorded modules into N groups and each group's recorded time
    (without the Pacemaker modules' bond, which only a collection of the suite can see)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.groups")
    parser.add_argument("--merge", nargs="+", type=Path, help="measured durations to record")
    parser.add_argument("groups", nargs="?", type=int, default=2)
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge(args.merge)
        print(f"{DURATIONS_FILE}: {len(merged)} modules recorded")
        return 0
    durations = load_durations()
    counts = {m: 1 for m in durations}
    for i, modules in enumerate(split(counts, durations, args.groups), 1):
        print(f"group {i}: {expected_seconds(modules, durations):.0f} s: {' '.join(modules)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
