"""The FTS web front end of a lab host, and its command ``fts-frontend``.

The server (process title ``fts-frontend``) listens on the host's address and the site's
``frontend.port``. Its role lives in ``/etc/fts-frontend.role`` (the host's own /etc, so a
disabled master stays a slave after a reboot) and is re-read when the file changes:

* **master** with an epoch: ``POST /jobs`` (``{"id": ...}``) records the submission in the
  database with that epoch (201; 200 for an id already recorded). The database refuses a write
  whose epoch is older than its current one (`sql/schema.sql`, ``refuse_fenced_write``): the
  front end then answers 503 ``fenced`` and writes nothing.
* **slave**: 503, or for a while after a planned switch a 307 redirect to the new master, so a
  client that still holds the old address loses nothing. The new master holds a redirected
  request for up to `HOLD_REDIRECTED_S` while its own enable is still on the way. Two switches
  within the redirect time leave two slaves redirecting to each other: the newer redirect wins.
* ``GET /ready``: 200 with the role and epoch when it is the master, else 503.

The command, run through SSH by handover's verbs (`tasks.frontend`):

* ``fts-frontend status``: one JSON line: whether the server runs and answers, its role and
  epoch, and the database's current epoch and holder (or why it could not be read).
* ``fts-frontend enable EPOCH``: claim the epoch in the database (refused when the database
  holds a newer one), become the master with it, start the server when it is not running, and
  wait until it answers as the master.
* ``fts-frontend disable --redirect ADDRESS|- --for SECONDS``: become a slave; for SECONDS,
  redirect clients to ADDRESS. A server that is not running is not started.
* ``fts-frontend fence EPOCH``: raise the database's epoch without serving: a master that cannot
  be reached can no longer write.
* ``fts-frontend start|stop``: the server (``service fts-frontend ...`` at boot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from infra.lab.runtime import HostRuntime, load_runtime

TITLE = "fts-frontend"
ROLE_FILE = Path("/etc/fts-frontend.role")
#: the database refused a write as fenced (`sql/schema.sql`)
FENCED_SQLSTATE = "P0002"
START_WAIT_S = 5.0
#: how long a slave holds a request redirected to it before it refuses it
HOLD_REDIRECTED_S = 3.0
EXIT_FAILED = 1


# --- the role file ------------------------------------------------------------------------------


def read_role(path: Path = ROLE_FILE) -> dict[str, Any]:
    """The role file: ``{"role": "master"|"slave", "epoch": N, "redirect": ADDR|None,
    "redirect_until": UNIX_TIME}`` (a missing file: a slave without epoch)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"role": "slave", "epoch": None, "redirect": None, "redirect_until": 0}
    return data


def write_role(role: dict[str, Any], path: Path = ROLE_FILE) -> None:
    """Replace the role file atomically (the server never reads half a file)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(role) + "\n")
    os.replace(tmp, path)


# --- the server ---------------------------------------------------------------------------------


class Frontend:
    """The server's state: its role (re-read on change) and its database session."""

    def __init__(self, rt: HostRuntime, role_file: Path = ROLE_FILE) -> None:
        self.rt = rt
        self.role_file = role_file
        self.role: dict[str, Any] = read_role(role_file)
        self.role_mtime = 0.0
        self.db_lock = threading.Lock()
        self.conn: Any = None
        with open(rt["db_password_file"]) as f:
            self.password = f.read().strip()

    def current_role(self) -> dict[str, Any]:
        try:
            mtime = self.role_file.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime != self.role_mtime:
            self.role = read_role(self.role_file)
            self.role_mtime = mtime
        return self.role

    def _db(self) -> Any:
        from infra.lab.db import connect_from_host

        if self.conn is None:
            self.conn = connect_from_host(self.rt, self.password, application_name=TITLE, timeout=3)
        return self.conn

    def record(self, job_id: str, epoch: int) -> tuple[int, str]:
        """Write one submission with `epoch`: (HTTP status, what happened)."""
        import pg8000.native

        with self.db_lock:
            # a kept connection may have died meanwhile (its session killed, the host frozen):
            # like a web service's pool, drop it and try once more on a new one (the insert is
            # idempotent)
            for attempt in (1, 2):
                reused = self.conn is not None
                try:
                    rows = self._db().run(
                        "INSERT INTO submissions (id, host, epoch) VALUES (:i, :h, :e) "
                        "ON CONFLICT (id) DO NOTHING RETURNING id",
                        i=job_id,
                        h=self.rt["host"],
                        e=epoch,
                    )
                    break
                except pg8000.native.DatabaseError as exc:
                    detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                    if detail.get("C") == FENCED_SQLSTATE:
                        return 503, f"fenced: {detail.get('M', exc)}"
                    self._drop()
                    if not (reused and attempt == 1):
                        return 503, f"database error: {exc}"
                except (OSError, pg8000.native.InterfaceError) as exc:
                    self._drop()
                    if not (reused and attempt == 1):
                        return 503, f"database unreachable: {exc}"
        return (201, "accepted") if rows else (200, "already accepted")

    def _drop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = None


def _handler(fe: Frontend) -> type[BaseHTTPRequestHandler]:
    port = fe.rt["frontend_port"]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def _redirect_to(self, role: dict[str, Any], came_from: str, since: float) -> str | None:
            """Where this slave sends clients now: its redirect while it lasts. Two switches
            within the redirect time leave two slaves redirecting to each other: back to the
            sender only when this host's redirect is the newer one (the sender's is stale, and
            the sender, seeing a newer redirect come back, holds the request for its enable)."""
            to = role.get("redirect")
            if not to or time.time() >= float(role.get("redirect_until") or 0):
                return None
            if to == came_from and float(role.get("redirect_since") or 0) <= since:
                return None
            return str(to)

        def _not_master(self, role: dict[str, Any], came_from: str, since: float) -> None:
            to = self._redirect_to(role, came_from, since)
            if to:
                mine = float(role.get("redirect_since") or 0)
                self._send(
                    307,
                    {"role": "slave", "redirect": to},
                    {
                        "Location": f"http://{to}:{port}/jobs?redirected={fe.rt['address']}"
                        f"&since={mine:.6f}"
                    },
                )
            else:
                self._send(503, {"role": "slave", "host": fe.rt["host"]})

        def do_GET(self) -> None:
            role = fe.current_role()
            if self.path != "/ready":
                self._send(404, {"error": "unknown path"})
            elif role.get("role") == "master":
                self._send(200, {"role": "master", "epoch": role.get("epoch")})
            else:
                self._send(503, {"role": "slave", "epoch": role.get("epoch")})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            if path != "/jobs":
                self._send(404, {"error": "unknown path"})
                return
            role = fe.current_role()
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)
            came_from = params.get("redirected", "")
            try:
                since = float(params.get("since", "0"))
            except ValueError:
                since = 0.0
            if (
                came_from
                and role.get("role") != "master"
                and not self._redirect_to(role, came_from, since)
            ):
                # sent here by the master of a planned switch, which may be a moment ahead of
                # this host's enable: hold the request briefly rather than refuse it
                deadline = time.monotonic() + HOLD_REDIRECTED_S
                while role.get("role") != "master" and time.monotonic() < deadline:
                    time.sleep(0.02)
                    role = fe.current_role()
            if role.get("role") != "master":
                self._not_master(role, came_from, since)
                return
            try:
                job_id = str(json.loads(body)["id"])[:64]
            except (ValueError, KeyError, TypeError):
                self._send(400, {"error": 'the body must be {"id": ...}'})
                return
            code, what = fe.record(job_id, int(role["epoch"]))
            self._send(code, {"id": job_id, "result": what, "epoch": role["epoch"]})

    return Handler


def serve(rt: HostRuntime) -> int:
    """Run the server until SIGTERM."""
    with contextlib.suppress(ImportError):
        from setproctitle import setproctitle

        setproctitle(TITLE)
    fe = Frontend(rt)
    server = ThreadingHTTPServer((rt["address"], rt["frontend_port"]), _handler(fe))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.2)
    return 0


# --- the command --------------------------------------------------------------------------------


def server_pids() -> list[int]:
    """PIDs of this host's front-end servers."""
    from infra.lab.hostcmd import agent_pids

    return agent_pids(TITLE)


def _ask_ready(rt: HostRuntime, timeout: float = 1.0) -> dict[str, Any] | None:
    """What the server answers on /ready (None: it does not answer)."""
    from tasks.http_probe import ask_ready

    answer = ask_ready(rt["address"], rt["frontend_port"], timeout)
    return answer[1] if answer is not None else None


def _db_epoch(rt: HostRuntime) -> tuple[int | None, str | None, str | None]:
    from infra.lab.hostcmd import _db

    try:
        conn: Any = _db(rt)
        try:
            rows = conn.run("SELECT epoch, holder FROM service_epoch WHERE id = 1")
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - reported, never raised: status always answers
        return None, None, f"{type(exc).__name__}: {exc}"
    return int(rows[0][0]), str(rows[0][1]), None


def _claim(rt: HostRuntime, epoch: int, who: str) -> str | None:
    """Claim `epoch` in the database; the refusal's message, or None."""
    from infra.lab.hostcmd import _db

    try:
        conn: Any = _db(rt)
        try:
            conn.run("SELECT claim_epoch(:e, :w)", e=epoch, w=who)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - the command says why and fails
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        return str(detail.get("M") or exc)
    return None


def start(rt: HostRuntime) -> int:
    """Start the server when it is not running; wait until it answers."""
    if server_pids():
        print(f"fts-frontend: already running (pid {server_pids()[0]})")
        return 0
    Path(rt["log_dir"]).mkdir(parents=True, exist_ok=True)
    with open(Path(rt["log_dir"]) / "fts-frontend.log", "ab") as log:
        proc = subprocess.Popen(
            [rt["python"], "-m", "infra.lab.frontend", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if _ask_ready(rt, 0.5) is not None:
            print(f"fts-frontend: started (pid {proc.pid})")
            return 0
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    print(f"fts-frontend: did not answer within {START_WAIT_S:g} s", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    return EXIT_FAILED


def stop(_rt: HostRuntime) -> int:
    """Stop the server (SIGTERM, SIGKILL after 5 s)."""
    pids = server_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while server_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in server_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print("fts-frontend: stopped" if pids else "fts-frontend: not running")
    return 0


def status(rt: HostRuntime) -> int:
    """One JSON line: the server, its role and epoch, the database's epoch."""
    role = read_role()
    pids = server_pids()
    ready = _ask_ready(rt) if pids else None
    db_epoch, holder, db_error = _db_epoch(rt)
    print(
        json.dumps(
            {
                "host": rt["host"],
                "running": bool(pids),
                "answers": ready is not None,
                "role": role.get("role"),
                "epoch": role.get("epoch"),
                "redirect": role.get("redirect"),
                "redirect_until": role.get("redirect_until"),
                "db_epoch": db_epoch,
                "db_holder": holder,
                "db_error": db_error,
            }
        )
    )
    return 0


def enable(rt: HostRuntime, epoch: int) -> int:
    """Claim `epoch`, become the master with it, and answer as the master."""
    refused = _claim(rt, epoch, rt["host"])
    if refused:
        print(
            f"fts-frontend: cannot enable {rt['host']} with epoch {epoch}: {refused}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    write_role({"role": "master", "epoch": epoch, "redirect": None, "redirect_until": 0})
    if not server_pids() and start(rt) != 0:
        return EXIT_FAILED
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        ready = _ask_ready(rt, 0.5)
        if ready and ready.get("role") == "master" and ready.get("epoch") == epoch:
            print(f"fts-frontend: {rt['host']} is the master with epoch {epoch}")
            return 0
        time.sleep(0.05)
    print(f"fts-frontend: {rt['host']} does not answer as the master", file=sys.stderr)
    return EXIT_FAILED


def disable(redirect: str, seconds: int) -> int:
    """Become a slave; redirect clients to `redirect` for `seconds` (``-``: no redirect)."""
    old = read_role()
    to = None if redirect == "-" else redirect
    write_role(
        {
            "role": "slave",
            "epoch": old.get("epoch"),
            "redirect": to,
            "redirect_until": time.time() + seconds if to else 0,
            "redirect_since": time.time(),
        }
    )
    where = f", redirecting clients to {to} for {seconds} s" if to else ""
    print(f"fts-frontend: slave{where}")
    return 0


def fence(rt: HostRuntime, epoch: int) -> int:
    """Raise the database's epoch to `epoch` without serving."""
    refused = _claim(rt, epoch, f"fenced from {rt['host']}")
    if refused:
        print(f"fts-frontend: cannot raise the epoch to {epoch}: {refused}", file=sys.stderr)
        return EXIT_FAILED
    print(f"fts-frontend: the database's epoch is {epoch}; older masters cannot write")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.frontend serve|start|stop|status|enable|disable|fence ...``."""
    ap = argparse.ArgumentParser(prog="fts-frontend")
    sub = ap.add_subparsers(dest="action", required=True)
    for name in ("serve", "start", "stop", "status"):
        sub.add_parser(name)
    for name in ("enable", "fence"):
        sub.add_parser(name).add_argument("epoch", type=int)
    d = sub.add_parser("disable")
    d.add_argument("--redirect", default="-")
    d.add_argument("--for", dest="seconds", type=int, default=0)
    args = ap.parse_args(argv)
    rt = load_runtime()
    if not rt.get("frontend_port"):
        print(f"fts-frontend: no front end on {rt['host']}", file=sys.stderr)
        return EXIT_FAILED
    if args.action == "serve":
        return serve(rt)
    if args.action == "start":
        return start(rt)
    if args.action == "stop":
        return stop(rt)
    if args.action == "status":
        return status(rt)
    if args.action == "enable":
        return enable(rt, args.epoch)
    if args.action == "fence":
        return fence(rt, args.epoch)
    return disable(args.redirect, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
