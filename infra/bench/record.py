"""A bench's figures kept for the documentation: `handover bench NAME --record`.

The record is the bench's own result (what `--json` prints) with what a reader needs to judge
it: when it ran, on which commit (and whether the tree had changes), on which machine, and the
exact command. `python -m infra.docs` renders the committed records as the benchmarks page;
the history of each figure is the history of its file in git.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
#: where the records live (committed; rendered into the documentation site)
RECORDS = ROOT / "docs" / "benchmarks"


class Machine(BaseModel):
    """The machine a bench ran on, as far as its figures depend on it."""

    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    os: str
    python: str
    prefect: str


class Record(BaseModel):
    """One bench run, as committed under docs/benchmarks/NAME.json."""

    bench: str
    command: str
    date: dt.datetime
    commit: str
    machine: Machine
    result: dict[str, Any]


def _first(path: str, key: str, sep: str = ":") -> str:
    """The value of the first line of `path` that starts with `key` (`key<sep>value`)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key) and sep in line:
                return line.split(sep, 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> Machine:
    """This machine's CPUs, memory, kernel, OS and the versions the figures depend on."""
    from importlib.metadata import version

    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    return Machine(
        cpus=os.cpu_count() or 0,
        cpu_model=_first("/proc/cpuinfo", "model name"),
        memory_gib=round(int(mem_kib) / 1024 / 1024, 1) if mem_kib.isdigit() else 0.0,
        kernel=platform.release(),
        os=_first("/etc/os-release", "PRETTY_NAME", "=").strip('"'),
        python=platform.python_version(),
        prefect=version("prefect"),
    )


def checked_out() -> str:
    """The checked-out commit, `+changes` when the working tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def record(
    bench: str,
    argv: list[str],
    result: dict[str, Any],
    out: Path = RECORDS,
    *,
    commit: str | None = None,
) -> Path:
    """Write `result` as the latest record of `bench`; returns the file written.

    Args:
        bench: the bench's name (`clean-move`).
        argv: the command's arguments after `handover` (as typed).
        result: what the bench returned (its `--json`).
        out: the directory of records.
        commit: the commit measured (`checked_out()` when the bench started; default: now).
    """
    rec = Record(
        bench=bench,
        command="handover " + shlex.join(argv),
        date=dt.datetime.now(dt.UTC).replace(microsecond=0),
        commit=commit or checked_out(),
        machine=machine(),
        result=result,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec.model_dump(mode="json"), indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def load_records(directory: Path = RECORDS) -> list[Record]:
    """Every committed record, by bench name.

    Raises:
        ValueError: a file is not a record (names it).
    """
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append(Record.model_validate_json(path.read_text()))
        except ValueError as exc:
            raise ValueError(f"{path}: not a bench record: {exc}") from None
    return found
