"""The geo lab's tool: an HTTPS web application writing to its own site's MariaDB.

``python -m infra.lab.geo.tool --config FILE`` (a JSON `ToolConfig` the lab writes) serves on
the placement's address and the tool's port, with a certificate of the lab's CA for the tool's
first name, its site's host name and its address (not its other names). It talks to its own
site's database as the tool's own account, and reads where it is active from the DNS masters
(`infra.lab.geo.dnsview`).

* ``POST /write`` ``{"id": "..."}``: 503 before any master answered; 307 to the active site
  when the view names another address; else, in one transaction, the fence row is locked
  (``SELECT ... FOR UPDATE``) and the write refused (503 ``fenced``) unless the fence names this
  site with the view's epoch; the row is inserted with the fence's epoch and 200 answers only
  after COMMIT returned: an acknowledged write is durable. A read-only server: 503
  ``read-only``; another database error: 503 with its message.
* ``GET /read?id=X``: the row, or 404.
* ``GET /health``: 200 ``{"site", "epoch", "writable": true}`` when the database answers, is
  writable and its fence names this site with the view's epoch; else 503 with the reason.
* ``GET /``, ``/about``, ``/dashboard``, ``/legacy``: pages for the product's remap check, with
  planted traps: the dashboard links to another host and ``/legacy`` redirects to one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import html
import json
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pymysql  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from config.site import DnsServer
from infra.lab.errors import LabError
from infra.lab.geo import secrets
from infra.lab.geo.dnsview import DnsView, View
from infra.lab.geo.mariadb import ER_OPTION_PREVENTS_STATEMENT, connect

#: the largest request body taken
MAX_BODY = 64 * 1024
#: a client connection's bound (TLS handshake and request)
CLIENT_TIMEOUT_S = 10.0


class ToolConfig(BaseModel):
    """What one tool process serves (written by the lab as JSON)."""

    tool: str
    site: str
    #: the tool's DNS names (the first is the one its view reads and its certificate covers)
    names: list[str] = Field(min_length=1)
    #: the site-specific host name its certificate also covers
    host_name: str
    address: str
    port: int
    cert: Path
    key: Path
    db_host: str
    db_port: int
    db_user: str
    db_password_file: Path
    database: str
    db_timeout_s: float = 3.0
    masters: list[DnsServer] = Field(min_length=1)
    #: the host ``/legacy`` redirects to (a planted redirect to another host)
    legacy_host: str
    #: the dashboard's planted absolute link to another host
    old_link: str


class ToolServer(ThreadingHTTPServer):
    """The HTTPS server: TLS is negotiated in each request's thread, not in the accept loop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cfg: ToolConfig, view: DnsView, context: ssl.SSLContext, password: str):
        self.cfg = cfg
        self.view = view
        self.context = context
        self.password = password
        super().__init__((cfg.address, cfg.port), Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Negotiate TLS, then serve the connection (a failed handshake is dropped)."""
        request.settimeout(CLIENT_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class Handler(BaseHTTPRequestHandler):
    """The tool's pages and API (module docstring)."""

    server: ToolServer
    protocol_version = "HTTP/1.1"
    server_version = "handover-geo-tool/1"

    @property
    def cfg(self) -> ToolConfig:
        return self.server.cfg

    # --- plumbing ------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        sys.stderr.write(f"{stamp} {self.client_address[0]} {format % args}\n")

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(
        self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _html(self, title: str, body: str) -> None:
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
        )
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _db(self, autocommit: bool = True) -> pymysql.connections.Connection[Any]:
        c = self.cfg
        return connect(
            c.db_host,
            c.db_port,
            c.db_user,
            self.server.password,
            database=c.database,
            timeout_s=c.db_timeout_s,
            autocommit=autocommit,
        )

    # --- routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        routes: dict[str, Callable[[], None]] = {
            "/": self._index,
            "/about": self._about,
            "/dashboard": self._dashboard,
            "/legacy": self._legacy,
            "/health": self._health,
            "/read": lambda: self._read(parse_qs(url.query).get("id", [""])[0]),
        }
        route = routes.get(url.path)
        if route is None:
            self._json(404, {"error": f"no page {url.path}"})
            return
        route()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/write":
            self._json(404, {"error": f"no endpoint {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._json(400, {"error": f"a JSON body of 1 to {MAX_BODY} bytes is needed"})
            return
        try:
            data = json.loads(self.rfile.read(length))
            ident = data["id"]
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": 'the body must be JSON {"id": "..."}'})
            return
        if not isinstance(ident, str) or not 1 <= len(ident) <= 64:
            self._json(400, {"error": "id: a string of 1 to 64 characters"})
            return
        self._write(ident)

    def _write(self, ident: str) -> None:
        cfg, view = self.cfg, self.server.view.current()
        if not view.answered:
            self._json(503, {"error": "fenced: no DNS master answered yet"})
            return
        if view.address is None:
            self._json(503, {"error": f"fenced: {view.problem}", "epoch": view.epoch})
            return
        if view.address != cfg.address:
            to = f"https://{view.address}:{cfg.port}/write"
            self._json(
                307,
                {"error": "moved", "to": view.address, "epoch": view.epoch},
                {"Location": to},
            )
            return
        try:
            with contextlib.closing(self._db(autocommit=False)) as conn, conn.cursor() as cur:
                cur.execute("SELECT epoch, site FROM handover_fence WHERE id = 1 FOR UPDATE")
                row = cur.fetchone()
                if row is None or row[0] != view.epoch or row[1] != cfg.site:
                    conn.rollback()
                    self._json(503, self._fenced(view, row))
                    return
                epoch = int(row[0])
                cur.execute(
                    "INSERT INTO writes (id, site, epoch, at) "
                    "VALUES (%s, %s, %s, UTC_TIMESTAMP(6))",
                    (ident, cfg.site, epoch),
                )
                cur.execute("SELECT at FROM writes WHERE id = %s", (ident,))
                at = cur.fetchone()
                conn.commit()
        except pymysql.MySQLError as exc:
            self._json(503, _db_error(exc))
            return
        stamp = at[0].isoformat() if at else None
        self._json(200, {"id": ident, "site": cfg.site, "epoch": epoch, "at": stamp})

    def _fenced(self, view: View, row: Any) -> dict[str, Any]:
        fence = "no fence row" if row is None else f"the fence names {row[1]} at epoch {row[0]}"
        return {
            "error": "fenced",
            "reason": f"{fence}; DNS says epoch {view.epoch} at {view.address}",
            "fence_epoch": None if row is None else row[0],
            "fence_site": None if row is None else row[1],
            "dns_epoch": view.epoch,
        }

    def _read(self, ident: str) -> None:
        try:
            with contextlib.closing(self._db()) as conn, conn.cursor() as cur:
                cur.execute("SELECT id, site, epoch, at FROM writes WHERE id = %s", (ident,))
                row = cur.fetchone()
        except pymysql.MySQLError as exc:
            self._json(503, _db_error(exc))
            return
        if row is None:
            self._json(404, {"error": f"no write {ident!r}"})
            return
        self._json(200, {"id": row[0], "site": row[1], "epoch": row[2], "at": row[3].isoformat()})

    def _health(self) -> None:
        cfg, view = self.cfg, self.server.view.current()
        try:
            with contextlib.closing(self._db()) as conn, conn.cursor() as cur:
                cur.execute("SELECT @@global.read_only")
                ro = cur.fetchone()
                cur.execute("SELECT epoch, site FROM handover_fence WHERE id = 1")
                row = cur.fetchone()
        except pymysql.MySQLError as exc:
            self._json(503, {"site": cfg.site, "writable": False, **_db_error(exc)})
            return
        reason = None
        if ro and ro[0]:
            reason = "read-only"
        elif not view.answered:
            reason = "no DNS master answered yet"
        elif row is None or row[1] != cfg.site or row[0] != view.epoch:
            reason = self._fenced(view, row)["reason"]
        fence_epoch = None if row is None else int(row[0])
        if reason:
            self._json(
                503,
                {"site": cfg.site, "epoch": fence_epoch, "writable": False, "reason": reason},
            )
            return
        self._json(200, {"site": cfg.site, "epoch": fence_epoch, "writable": True})

    def _index(self) -> None:
        first = self.cfg.names[0].rstrip(".")
        self._html(
            f"{self.cfg.tool} at {self.cfg.site}",
            "<ul><li><a href='/about'>About</a></li><li><a href='/dashboard'>Dashboard</a></li>"
            "<li><a href='/health'>Health</a></li>"
            f"<li><a href='https://{html.escape(first)}:{self.cfg.port}/about'>About "
            "(permalink)</a></li></ul>",
        )

    def _about(self) -> None:
        self._html(
            f"About {self.cfg.tool}",
            f"<p>The operations tool, served at {html.escape(self.cfg.site)}.</p>",
        )

    def _dashboard(self) -> None:
        self._html(
            "Dashboard",
            f"<ul><li><a href='{html.escape(self.cfg.old_link)}'>Manage (old console)</a></li>"
            "<li><a href='/legacy'>Legacy view</a></li><li><a href='/'>Home</a></li></ul>",
        )

    def _legacy(self) -> None:
        self._send(
            302,
            b"moved\n",
            "text/plain",
            {"Location": f"https://{self.cfg.legacy_host}/legacy"},
        )


def _db_error(exc: pymysql.MySQLError) -> dict[str, Any]:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code == ER_OPTION_PREVENTS_STATEMENT:
        return {"error": "read-only"}
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    return {"error": f"database: {message}", "code": code}


def serve(cfg: ToolConfig) -> ToolServer:
    """The tool's server for `cfg`, its DNS view started (`serve_forever` serves it).

    Raises:
        LabError: the database password is unreadable or not private.
        OSError: the address and port cannot be bound.
    """
    password = secrets.read(cfg.db_password_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.cert, cfg.key)
    view = DnsView(cfg.masters, cfg.names[0])
    view.start()
    try:
        return ToolServer(cfg, view, context, password)
    except BaseException:
        view.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.geo.tool --config FILE``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m infra.lab.geo.tool")
    parser.add_argument("--config", required=True, type=Path, help="the tool's JSON config")
    args = parser.parse_args(argv)
    cfg = ToolConfig.model_validate_json(args.config.read_text())
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(f"handover-geo-tool {cfg.tool} {cfg.site}")
    try:
        server = serve(cfg)
    except (LabError, OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(
            f"{cfg.tool} at {cfg.site}: cannot serve https://{cfg.address}:{cfg.port}: {why}",
            file=sys.stderr,
            flush=True,
        )
        return 1

    def _stop(signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"serving {cfg.tool} at {cfg.site} on https://{cfg.address}:{cfg.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.view.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
