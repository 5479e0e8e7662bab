"""Several read-only commands in one SSH round trip: the script that runs them, and its split.

A snapshot reads a handful of things on each host (its process table, its `.disabled` file, the
agents' status, ...). Sent one by one, each costs a session on the host (a channel, a login
shell) and a round trip; for a site of many hosts those dominate. `batch_script` joins the
commands into one POSIX shell script that runs them in order, each in a subshell with its stdin
closed, and frames each one's stdout and stderr between marker lines that carry a random nonce
(no output can forge one by chance) and its exit code; `split_batch` cuts the one result back
into a result per command. Meant for queries: a command of the batch that hangs holds the others.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Sequence

from tasks.adapters.ssh import CommandResult, TransientSshError


def new_nonce() -> str:
    """A marker no command output contains by chance."""
    return secrets.token_hex(12)


def batch_script(lines: Sequence[str], nonce: str) -> str:
    """One line of POSIX shell running each command line in order, its output framed (run it
    as ``sh -c SCRIPT``, so that the remote login shell only parses one quoted word).

    For command ``i``: ``B<nonce> i`` on a line of its own on stdout and on stderr, then the
    command's output, then a newline and ``E<nonce> i RC START END`` (stdout) / ``E<nonce> i``
    (stderr). START and END are the host's uptime before and after the command (``/proc/uptime``,
    read by the shell's builtin ``read``: no process per command; 10 ms steps); empty where the
    host has no such file.
    """
    if not lines:
        raise ValueError("a batch needs at least one command")
    if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
        raise ValueError(f"the nonce {nonce!r} is not hex")
    parts = []
    for i, line in enumerate(lines):
        # a subshell each: a command that exits (or changes directory) leaves the rest alone
        parts.append(
            f"printf 'B{nonce} {i}\\n'; printf 'B{nonce} {i}\\n' >&2; "
            "_hb0=; read _hb0 _hb 2>/dev/null < /proc/uptime; "
            f"( {line} ) </dev/null; _hbrc=$?; "
            "_hb1=; read _hb1 _hb 2>/dev/null < /proc/uptime; "
            f'printf \'\\nE{nonce} {i} %d %s %s\\n\' "$_hbrc" "$_hb0" "$_hb1"; '
            f"printf '\\nE{nonce} {i}\\n' >&2"
        )
    return "; ".join(parts)


def _sections(
    text: str, nonce: str, count: int, *, codes: bool
) -> list[tuple[str, int | None, float | None]]:
    """Each command's text (and, on stdout, its exit code and duration when the host gave
    its times) from one stream of the batch."""
    found: list[tuple[str, int | None, float | None]] = []
    pos = 0
    for i in range(count):
        begin = f"B{nonce} {i}\n"
        start = text.find(begin, pos)
        if start < 0:
            break
        body = start + len(begin)
        tail = r" (-?\d+) ([\d.]*) ([\d.]*)" if codes else ""
        m = re.compile(rf"\nE{nonce} {i}{tail}\n").search(text, body)
        if m is None:
            break
        code = took = None
        if codes:
            code = int(m.group(1))
            with contextlib.suppress(ValueError):
                took = round(max(0.0, float(m.group(3)) - float(m.group(2))), 3)
        found.append((text[body : m.start()], code, took))
        pos = m.end()
    return found


def split_batch(result: CommandResult, lines: Sequence[str], nonce: str) -> list[CommandResult]:
    """The result of each command of a batch (`batch_script`), in order.

    Each result has its command's own duration as the host timed it (to 10 ms), or the
    whole batch's where the host gave no times.

    Raises:
        TransientSshError: the batch ended before every command had run (the shell was killed,
            or the output was cut): which commands ran is then unknown.
    """
    out = _sections(result.stdout, nonce, len(lines), codes=True)
    err = _sections(result.stderr, nonce, len(lines), codes=False)
    if len(out) < len(lines) or len(err) < len(lines):
        ran = min(len(out), len(err))
        raise TransientSshError(
            f"{result.host}: a batch of {len(lines)} commands ended after {ran} (exit "
            f"{result.exit_code}): {lines[ran][:200]!r} did not finish; retry",
            host=result.host,
            command=lines[ran],
        )
    return [
        CommandResult(
            host=result.host,
            command=line,
            exit_code=code if code is not None else -1,
            stdout=o,
            stderr=e,
            duration_s=result.duration_s if took is None else took,
        )
        for line, (o, code, took), (e, _, _) in zip(lines, out, err, strict=True)
    ]
