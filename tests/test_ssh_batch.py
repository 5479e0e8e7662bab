"""A batch of commands as one script, and its output cut back per command (no server needed;
`tests/test_ssh.py` runs batches on a real sshd)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tasks.adapters.ssh import CommandResult, TransientSshError
from tasks.adapters.ssh_batch import batch_script, new_nonce, split_batch
from tasks.site_state import spread_channels

LINES = [
    "printf 'no newline'",
    "echo out; echo err >&2; exit 4",
    "cat",
    "exit 0",  # in its subshell: the batch goes on
    "printf 'B%s 5\\n' fake; echo after",  # a marker with another nonce is output
    "printf '\\n\\n'",
]


def run_locally(lines: list[str], nonce: str, *, script: str | None = None) -> CommandResult:
    """The script run by the local sh, as sshd would run it; timed by the wall clock."""
    started = time.monotonic()
    done = subprocess.run(
        ["sh", "-c", script or batch_script(lines, nonce)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return CommandResult(
        host="h",
        command="sh -c ...",
        exit_code=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
        duration_s=round(time.monotonic() - started, 3),
    )


def test_each_command_gets_its_exact_output_and_exit_code() -> None:
    nonce = new_nonce()
    results = split_batch(run_locally(LINES, nonce), LINES, nonce)
    assert [(r.command, r.exit_code, r.stdout, r.stderr) for r in results] == [
        (LINES[0], 0, "no newline", ""),
        (LINES[1], 4, "out\n", "err\n"),
        (LINES[2], 0, "", ""),
        (LINES[3], 0, "", ""),
        (LINES[4], 0, "Bfake 5\nafter\n", ""),
        (LINES[5], 0, "\n\n", ""),
    ]


def test_each_command_gets_its_own_duration_as_the_host_timed_it() -> None:
    """The host's uptime around each command (10 ms steps) gives each its own duration: a
    command sleeping 0.3 s took at least that and longer than its quick neighbours, and none
    took longer than the whole batch."""
    nonce = new_nonce()
    lines = ["true", "sleep 0.3", "echo x"]
    batch = run_locally(lines, nonce)
    results = split_batch(batch, lines, nonce)
    took = {r.command: r.duration_s for r in results}
    assert took["sleep 0.3"] >= 0.29, took
    # the host counts in 10 ms steps: one step more than the wall clock is rounding
    assert all(0 <= t <= batch.duration_s + 0.01 for t in took.values()), (took, batch.duration_s)
    assert took["true"] < took["sleep 0.3"] and took["echo x"] < took["sleep 0.3"], took


def test_without_the_hosts_times_each_command_gets_the_batchs_duration() -> None:
    """A host without /proc/uptime leaves the times empty: each command then has the whole
    batch's duration, as the only honest figure."""
    nonce = new_nonce()
    lines = ["echo a", "echo b"]
    script = batch_script(lines, nonce).replace("/proc/uptime", "/nonexistent/uptime")
    batch = run_locally(lines, nonce, script=script)
    results = split_batch(batch, lines, nonce)
    assert [r.stdout for r in results] == ["a\n", "b\n"]
    assert [r.stderr for r in results] == ["", ""]
    assert {r.duration_s for r in results} == {batch.duration_s}


def test_a_batch_that_stops_early_says_which_command_did_not_finish() -> None:
    nonce = new_nonce()
    lines = ["echo one", "kill -KILL $$", "echo three"]
    with pytest.raises(TransientSshError, match=r"ended after 1 .*kill -KILL"):
        split_batch(run_locally(lines, nonce), lines, nonce)


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        batch_script([], new_nonce())
    with pytest.raises(ValueError, match="not hex"):
        batch_script(["true"], "x'; rm -rf /")


def test_channels_are_spread_over_the_hosts_round_robin() -> None:
    assert spread_channels(["a", "b", "c", "d", "e"], ["h1", "h2"]) == {
        "h1": ["a", "c", "e"],
        "h2": ["b", "d"],
    }
    assert spread_channels(["a"], ["h1", "h2", "h3"]) == {"h1": ["a"], "h2": [], "h3": []}
    assert spread_channels(["a"], []) == {}
