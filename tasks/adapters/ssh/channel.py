"""One command on one channel: open a session, start the command, feed its stdin, read its
output until it exits or its bound ends (at most `MAX_OUTPUT_BYTES` of each stream kept)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paramiko

from tasks.adapters.ssh.diagnosis import command_timeout, dropped_during
from tasks.adapters.ssh.errors import TransientSshError, cmd, where
from tasks.adapters.ssh.models import CommandResult, SshEndpoint

log = logging.getLogger("tasks.adapters.ssh")

_CHUNK = 65536
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
"""What a command's stdout and stderr each keep (read on past it, dropped): a remote command
that prints without end must not fill the flow's memory."""
_EOF_GRACE_S = 0.5
"""How long to wait for EOF after the exit status (a daemon started by the command may hold the
output open forever; its output after the command exits is not collected)."""
_POLL_MIN_S = 0.001
_POLL_MAX_S = 0.02
_SETTLE_S = 0.2


def has_exit_status(channel: paramiko.Channel) -> bool:
    """Whether the server sent an exit status.

    Not ``Channel.exit_status_ready()``: that is also True for a channel closed without any exit
    status (dropped connection, or a command killed by a signal: paramiko ignores "exit-signal").
    """
    return channel.status_event.is_set() and channel.exit_status >= 0


def still_active(transport: paramiko.Transport | None) -> bool:
    """Whether the transport is alive, after letting a dying one finish dying.

    When the connection drops, paramiko closes the channels *before* it marks the transport
    inactive, so a channel closed without exit status may look like "killed by a signal" on a
    live transport for a moment. Give the transport thread a bounded moment to settle.
    """
    if transport is None:
        return False
    deadline = time.monotonic() + _SETTLE_S
    while transport.is_active():
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.005)
    return False


class SessionLost(Exception):
    """The cached transport died before the command was sent (safe to reconnect)."""


def open_and_exec(
    endpoint: SshEndpoint,
    client: paramiko.SSHClient,
    line: str,
    deadline: float,
    limit: float,
    discard: Callable[[], None],
) -> paramiko.Channel:
    """Open a session channel and start the command, within the deadline.

    Args:
        endpoint: the host.
        client: its connection.
        line: the command line.
        deadline: when the command's bound ends (``time.monotonic()``).
        limit: the bound, in seconds (named in errors).
        discard: drops the host's connection (after a timeout, it is not trusted).

    Raises:
        SessionLost: the transport is dead and the command was not sent (safe to retry on
            a new connection). Once the exec request is out, a loss is a TransientSshError.
    """
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise SessionLost
    try:
        channel = transport.open_session(timeout=max(deadline - time.monotonic(), 0.001))
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if not transport.is_active():
            raise SessionLost from exc
        if time.monotonic() >= deadline:
            discard()
            raise command_timeout(endpoint, line, limit, phase="open") from exc
        raise TransientSshError(
            f"{where(endpoint)}: the server refused a session for {cmd(line)} ({exc}); "
            "too many sessions on the host? retry later",
            host=endpoint.host,
            command=line,
        ) from exc
    channel.settimeout(max(deadline - time.monotonic(), 0.001))
    # Channel.exec_command waits for the server's reply without any timeout: a watchdog
    # closes the channel at the deadline, which wakes it up.
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), channel.close)
    watchdog.daemon = True
    watchdog.start()
    try:
        channel.exec_command(line)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        channel.close()
        # The request went out: the command may have started, so never re-send it.
        if time.monotonic() >= deadline:
            discard()
            raise command_timeout(endpoint, line, limit, phase="start") from exc
        if not transport.is_active():
            raise dropped_during(endpoint, line) from exc
        raise TransientSshError(
            f"{where(endpoint)}: the server refused to run {cmd(line)} ({exc}); "
            "check sshd's configuration (ForceCommand, MaxSessions), then retry",
            host=endpoint.host,
            command=line,
        ) from exc
    finally:
        watchdog.cancel()
    return channel


def collect(
    endpoint: SshEndpoint,
    client: paramiko.SSHClient,
    channel: paramiko.Channel,
    line: str,
    stdin: str | None,
    deadline: float,
    limit: float,
) -> CommandResult:
    """Feed stdin, read stdout/stderr until exit (or deadline), and build the result."""
    started = time.monotonic()
    transport = client.get_transport()
    stdout = bytearray()
    stderr = bytearray()
    dropped = [0, 0]  # bytes read past MAX_OUTPUT_BYTES, per stream

    def keep(buf: bytearray, data: bytes, stream: int) -> None:
        room = MAX_OUTPUT_BYTES - len(buf)
        buf += data[: max(room, 0)]
        dropped[stream] += max(len(data) - max(room, 0), 0)

    pending = memoryview(stdin.encode("utf-8")) if stdin else None
    exit_seen: float | None = None
    pause = _POLL_MIN_S
    try:
        if pending is None:
            channel.shutdown_write()
        while True:
            progressed = False
            while channel.recv_ready():
                keep(stdout, channel.recv(_CHUNK), 0)
                progressed = True
            while channel.recv_stderr_ready():
                keep(stderr, channel.recv_stderr(_CHUNK), 1)
                progressed = True
            if pending is not None and channel.send_ready() and not channel.closed:
                sent = channel.send(bytes(pending[:_CHUNK]))
                pending = pending[sent:]
                progressed = progressed or sent > 0
                if not pending:
                    channel.shutdown_write()
                    pending = None
            now = time.monotonic()
            if has_exit_status(channel):
                if channel.eof_received or channel.closed:
                    break
                exit_seen = now if exit_seen is None else exit_seen
                if now - exit_seen >= _EOF_GRACE_S:
                    log.debug(
                        "%s: %s exited but its output stays open (a daemon?); not waiting",
                        where(endpoint),
                        cmd(line),
                    )
                    break
            elif channel.closed:
                if now >= deadline:  # closed by the watchdog of _open_and_exec
                    raise command_timeout(endpoint, line, limit, phase="run")
                break
            if now >= deadline:
                raise command_timeout(endpoint, line, limit, phase="run")
            pause = _POLL_MIN_S if progressed else min(pause * 2, _POLL_MAX_S)
            wait = min(pause, max(deadline - now, 0.0))
            if exit_seen is None:
                channel.status_event.wait(wait)  # set by the exit status or the close
            else:
                time.sleep(wait)  # the event stays set once the exit status is in
        while channel.recv_ready():
            keep(stdout, channel.recv(_CHUNK), 0)
        while channel.recv_stderr_ready():
            keep(stderr, channel.recv_stderr(_CHUNK), 1)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if time.monotonic() >= deadline:
            raise command_timeout(endpoint, line, limit, phase="run") from exc
        raise dropped_during(endpoint, line) from exc
    if has_exit_status(channel):
        exit_code = channel.exit_status
    elif still_active(transport):
        exit_code = -1  # the server closed the channel without exit status: killed by a signal
    else:
        raise dropped_during(endpoint, line)
    cut = [f"\n[handover: {n} more bytes not kept]" if n else "" for n in dropped]
    return CommandResult(
        host=endpoint.host,
        command=line,
        exit_code=exit_code,
        stdout=stdout.decode("utf-8", errors="replace") + cut[0],
        stderr=stderr.decode("utf-8", errors="replace") + cut[1],
        duration_s=round(time.monotonic() - started, 6),
    )
