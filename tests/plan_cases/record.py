"""Rewrite the expected answers of the recorded-state cases from the planners as they are now.

Run after a deliberate change to a planner, then read `git diff tests/plan_cases/expected`: every
changed line is a change of behaviour to justify. `--check` only reports the cases that differ.
"""

from __future__ import annotations

import sys

from tests.plan_cases import cases, dumps, expected_path, run_case


def main(argv: list[str]) -> int:
    check = "--check" in argv
    differ = []
    for name, case in cases().items():
        text = dumps(run_case(case))
        path = expected_path(name)
        if not path.exists() or path.read_text() != text:
            differ.append(name)
            if not check:
                path.write_text(text)
    verb = "differ" if check else "rewritten"
    print(f"{len(cases())} cases, {len(differ)} {verb}: {', '.join(differ) or 'none'}")
    return 1 if check and differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
