"""A local fake of Slack's Web API, for tests and demos of notifications and approvals.

A real HTTP server on 127.0.0.1 that the real ``slack_sdk.WebClient(base_url=fake.base_url)``
talks to: it answers like Slack (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` with HTTP
200), records every call and keeps the messages (threads, edits) so tests can read what a run said.
It also serves response URLs (where the gateway sends ephemeral replies) and signs interaction
requests exactly as Slack does.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BOT_USER = "U0HANDOVER"


@dataclass
class Call:
    """One Web API request."""

    method: str
    params: dict[str, Any]
    token: str | None
    at: float


@dataclass
class Message:
    """A message as Slack keeps it."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    user: str = BOT_USER
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False


class FakeSlack:
    """The fake Web API server. Use as a context manager or with start()/stop()."""

    def __init__(
        self,
        *,
        tokens: set[str] | None = None,
        channels: dict[str, str] | None = None,
        usergroups: dict[str, list[str]] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.tokens = tokens or {"xoxb-test"}
        self.channels = channels or {"#fts-ops-lab": "C0LABOPS01", "fts-ops-lab": "C0LABOPS01"}
        self.usergroups = usergroups or {}
        self.users = users or {"U0LABOPS1": "labops", "U0INTRUDER": "intruder"}
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.responses: list[tuple[str, dict[str, Any]]] = []
        self._fail: dict[str, tuple[str, int, int | None]] = {}
        self._lock = threading.Lock()
        self._ts = itertools.count(int(time.time() * 1_000_000))
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeSlack:
        """Start serving in a background thread."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_POST

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{host}:{self._server.server_address[1]}/api/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (connections are then refused, as when Slack is unreachable)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading what happened -----------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def roots(self, channel_id: str | None = None) -> list[Message]:
        """Top-level messages, oldest first."""
        with self._lock:
            msgs = [
                m
                for m in self.messages.values()
                if m.thread_ts is None and (channel_id is None or m.channel == channel_id)
            ]
        return sorted(msgs, key=lambda m: m.ts)

    def thread(self, channel_id: str, root_ts: str) -> list[Message]:
        """A thread: its root, then its replies in order."""
        with self._lock:
            msgs = [
                m
                for m in self.messages.values()
                if m.channel == channel_id and (m.ts == root_ts or m.thread_ts == root_ts)
            ]
        return sorted(msgs, key=lambda m: (m.thread_ts is not None, m.ts))

    def record(self) -> dict[str, Any]:
        """Everything received, as JSON-ready data (also served at ``GET /_fake/record``)."""
        with self._lock:
            msgs = sorted(self.messages.values(), key=lambda m: m.ts)
            return {
                "calls": [{"method": c.method, "at": c.at} for c in self.calls],
                "messages": [
                    {
                        "channel": m.channel,
                        "ts": m.ts,
                        "thread_ts": m.thread_ts,
                        "text": m.text,
                        "blocks": m.blocks,
                        "edits": len(m.edits),
                        "deleted": m.deleted,
                    }
                    for m in msgs
                ],
                "responses": [{"id": i, "body": b} for i, b in self.responses],
            }

    def fail_next(
        self, method: str, error: str, *, status: int = 200, retry_after: int | None = None
    ) -> None:
        """Make the next call of `method` fail with `error` (HTTP 429 with Retry-After too)."""
        with self._lock:
            self._fail[method] = (error, status, retry_after)

    def response_url(self) -> str:
        """A new response URL on this server (like Slack's hooks.slack.com/actions/...)."""
        return f"{self.base_url.removesuffix('/api/')}/response/{next(self._ids)}"

    # --- serving -------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        if url.path.startswith("/response/"):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"raw": raw.decode(errors="replace")}
            with self._lock:
                self.responses.append((url.path.rsplit("/", 1)[-1], body))
            self._send(req, 200, b"ok", "text/plain")
            return
        if url.path == "/_fake/record":
            self._json(req, 200, self.record())
            return
        if url.path == "/_fake/view":
            from infra.fakeslack_view import page

            html = page(self.record(), self.users, self.channels)
            self._send(req, 200, html.encode(), "text/html")
            return
        if not url.path.startswith("/api/"):
            self._json(req, 404, {"ok": False, "error": "unknown_method"})
            return
        method = url.path.removeprefix("/api/")
        params: dict[str, Any] = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        ctype = req.headers.get("Content-Type", "")
        if raw and "json" in ctype:
            params.update(json.loads(raw))
        elif raw:
            params.update({k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()})
        for key in ("blocks", "attachments"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        auth = req.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() or params.pop("token", None)
        with self._lock:
            self.calls.append(Call(method, dict(params), token, time.time()))
            fail = self._fail.pop(method, None)
        if fail is not None:
            error, status, retry_after = fail
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            self._json(req, status, {"ok": False, "error": error}, headers)
            return
        if not token:
            self._json(req, 200, {"ok": False, "error": "not_authed"})
            return
        if token not in self.tokens:
            self._json(req, 200, {"ok": False, "error": "invalid_auth"})
            return
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            self._json(req, 404, {"ok": False, "error": "unknown_method"})
            return
        self._json(req, 200, handler(params))

    def _send(
        self,
        req: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(body)

    def _json(
        self,
        req: BaseHTTPRequestHandler,
        status: int,
        data: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send(
            req, status, json.dumps(data).encode(), "application/json; charset=utf-8", headers
        )

    def _channel(self, name: Any) -> str | None:
        text = str(name or "")
        if text.startswith("C") and text[1:].isalnum():
            return text
        return self.channels.get(text)

    def _new_ts(self) -> str:
        us = next(self._ts)
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    # --- methods -------------------------------------------------------------------------------

    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "user_id": BOT_USER,
            "bot_id": "B0HANDOVER",
            "team": "lab",
            "team_id": "T0LAB",
            "url": "https://lab.slack.invalid/",
        }

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(p.get("channel"))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        thread_ts = p.get("thread_ts") or None
        with self._lock:
            if thread_ts and (channel, thread_ts) not in self.messages:
                return {"ok": False, "error": "thread_not_found"}
            ts = self._new_ts()
            msg = Message(channel, ts, str(p.get("text") or ""), p.get("blocks"), thread_ts)
            self.messages[(channel, ts)] = msg
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "message": {
                "ts": ts,
                "text": msg.text,
                "blocks": msg.blocks,
                "user": BOT_USER,
                "thread_ts": thread_ts,
            },
        }

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(p.get("channel"))
        with self._lock:
            msg = self.messages.get((channel or "", str(p.get("ts"))))
            if msg is None:
                return {"ok": False, "error": "message_not_found"}
            msg.edits.append({"text": msg.text, "blocks": msg.blocks})
            if "text" in p:
                msg.text = str(p["text"])
            if "blocks" in p:
                msg.blocks = p["blocks"]
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": msg.text}

    def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.ephemerals.append(dict(p))
        return {"ok": True, "message_ts": self._new_ts()}

    def _m_chat_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            msg = self.messages.get((self._channel(p.get("channel")) or "", str(p.get("ts"))))
            if msg is None:
                return {"ok": False, "error": "message_not_found"}
            msg.deleted = True
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        uid = str(p.get("user"))
        if uid not in self.users:
            return {"ok": False, "error": "user_not_found"}
        return {
            "ok": True,
            "user": {"id": uid, "name": self.users[uid], "real_name": self.users[uid]},
        }

    def _m_usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        group = str(p.get("usergroup"))
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _m_conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel(p.get("channel"))
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        name = next((n for n, i in self.channels.items() if i == cid), cid).lstrip("#")
        return {"ok": True, "channel": {"id": cid, "name": name}}


# --- signing, as Slack does -----------------------------------------------------------------------


def slack_signature(signing_secret: str, timestamp: str | int, body: bytes | str) -> str:
    """``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` with the signing secret."""
    raw = body.decode() if isinstance(body, bytes) else body
    base = f"v0:{timestamp}:{raw}".encode()
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(
    signing_secret: str, body: bytes | str, *, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Slack sends with an interaction request."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": slack_signature(signing_secret, ts, body),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def interaction_body(
    *,
    user_id: str,
    action_id: str,
    value: str,
    channel_id: str = "C0LABOPS01",
    message_ts: str = "1732300000.000100",
    response_url: str = "https://hooks.slack.invalid/actions/x",
    user_name: str | None = None,
    team_id: str = "T0LAB",
    trigger_id: str = "123.456",
) -> str:
    """The form body of a ``block_actions`` interaction (a button click), as Slack sends it."""
    name = user_name or user_id.lower()
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": name, "name": name, "team_id": team_id},
        "api_app_id": "A0HANDOVER",
        "team": {"id": team_id, "domain": "lab"},
        "channel": {"id": channel_id, "name": "fts-ops-lab"},
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "message": {"type": "message", "ts": message_ts, "user": BOT_USER},
        "response_url": response_url,
        "trigger_id": trigger_id,
        "actions": [
            {
                "action_id": action_id,
                "block_id": "approval",
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)})
