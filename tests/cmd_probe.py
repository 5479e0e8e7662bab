"""A command for `tests/test_cmdserver.py` to run through a command server: it reports where
and how it runs, then ends as its first argument says."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    """``cmd_probe exit N | signal N | sleep S`` after printing a JSON line about itself."""
    how, value = sys.argv[1], sys.argv[2]
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
                "env": os.environ.get("PROBE_VALUE"),
                "stdin": sys.stdin.read() if how == "exit" else "",
            }
        ),
        flush=True,
    )
    print("to stderr", file=sys.stderr)
    if how == "signal":
        os.kill(os.getpid(), int(value))
    if how == "sleep":
        time.sleep(float(value))
    return int(value) if how == "exit" else 0


if __name__ == "__main__":
    sys.exit(main())
