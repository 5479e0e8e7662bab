"""The spool: alerts the gateway could not take, kept (mode 0600) and sent later, oldest first."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import NamedTuple

from infra.hooks.crm import describe
from infra.hooks.delivery import (
    deliver,
)
from infra.hooks.settings import (
    MAX_SPOOL_FILES,
    MIN_SEND_S,
    Log,
    log,
)


def pending(spool_dir: Path) -> list[Path]:
    """The spooled alerts, oldest first ([] when the directory cannot be read)."""
    try:
        return sorted(p for p in spool_dir.iterdir() if p.suffix == ".json" and p.name[0] != ".")
    except OSError:
        return []


def spool(
    spool_dir: Path,
    body: bytes,
    *,
    max_files: int = MAX_SPOOL_FILES,
    log: Log = log,
) -> Path:
    """Write an (unsigned) body to the spool atomically, mode 0600; drop the oldest beyond
    `max_files`.

    Returns:
        The spooled file; its name sorts by the time it was spooled.

    Raises:
        OSError: the spool directory cannot be created or written.
    """
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.json"
    tmp = spool_dir / f".tmp-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        final = spool_dir / name
        os.rename(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    files = pending(spool_dir)
    for old in files[: max(0, len(files) - max_files)]:
        try:
            old.unlink()
            log(f"spool full ({len(files)} > {max_files}): dropped the oldest alert {old.name}")
        except OSError:
            pass
    return final


def _lock(spool_dir: Path, deadline: float) -> int | None:
    """The spool's flush lock (one sender at a time keeps the order), waited for until
    `deadline` (monotonic); None when it cannot be had."""
    try:
        fd = os.open(spool_dir / ".flush.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() + 0.05 >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
        except OSError:
            os.close(fd)
            return None


def _clean_tmp(spool_dir: Path, older_than_s: float = 3600.0) -> None:
    """Temporary files left by a process killed while spooling."""
    try:
        for p in spool_dir.glob(".tmp-*"):
            if time.time() - p.stat().st_mtime > older_than_s:
                p.unlink()
    except OSError:
        pass


class FlushResult(NamedTuple):
    """What a flush did: alerts sent, alerts dropped (refused or unreadable), alerts left."""

    sent: int
    dropped: int
    left: int


def flush(
    spool_dir: Path,
    url: str,
    secret: bytes,
    *,
    timeout: float,
    deadline: float,
    log: Log = log,
) -> FlushResult:
    """Send the spooled alerts oldest first, each signed at send time; stop at the first one the
    gateway cannot take now (the order is kept) or when `deadline` (monotonic) is near.

    Delivered and refused alerts leave the spool. Alerts spooled meanwhile by parallel agents
    are sent in the same pass. Never raises.
    """
    sent = dropped = 0
    fd = _lock(spool_dir, deadline - MIN_SEND_S)
    if fd is None:
        left = len(pending(spool_dir))
        if left:
            log(f"{left} spooled alert(s) wait: the spool lock is held or cannot be taken")
        return FlushResult(0, 0, left)
    skipped: set[Path] = set()
    try:
        _clean_tmp(spool_dir)
        while True:
            files = [p for p in pending(spool_dir) if p not in skipped]
            if not files:
                break
            for path in files:
                remaining = deadline - time.monotonic()
                if remaining < MIN_SEND_S:
                    left = len(pending(spool_dir))
                    log(f"out of time: {left} alert(s) stay spooled")
                    return FlushResult(sent, dropped, left)
                try:
                    body = path.read_bytes()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    skipped.add(path)
                    log(f"cannot read spooled file {path.name} ({exc}): left in the spool")
                    continue
                try:
                    json_ok = isinstance(json.loads(body), dict)
                except ValueError:
                    json_ok = False
                if not json_ok:
                    _unlink(path)
                    dropped += 1
                    log(f"dropped spooled file {path.name}: not a JSON alert")
                    continue
                d = deliver(url, secret, body, timeout=min(timeout, remaining))
                if d.outcome == "delivered":
                    _unlink(path)
                    sent += 1
                    log(f"delivered spooled {describe(body)} ({d.status})")
                elif d.outcome == "refused":
                    _unlink(path)
                    dropped += 1
                    log(
                        f"gateway refused spooled {describe(body)} ({d.status} {d.detail}): dropped"
                    )
                else:
                    left = len(pending(spool_dir))
                    log(f"gateway unavailable ({d.status or d.detail}): {left} alert(s) spooled")
                    return FlushResult(sent, dropped, left)
    finally:
        os.close(fd)
    return FlushResult(sent, dropped, len(skipped))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
