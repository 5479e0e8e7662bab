"""Slack: one thread per procedure run, Block Kit messages, an approval message with buttons.

Contract of `SlackNotifier`:
    * It never raises and never blocks a procedure for long: every call has a 5 s timeout, and a
      failure (Slack unreachable, token refused, rate limit) is logged and remembered in
      `failures`; later calls still try. Only an approval waits, and it waits on Prefect (the
      pause), not on Slack: the Prefect UI can always decide.
    * The bot token is read once from its reference and never appears in a log, a message or an
      error; errors are reported by Slack's error code (``invalid_auth``).
    * The approval buttons carry the flow run id as their value, with action ids ``approve`` and
      ``reject``; the gateway resumes the run, the flow updates the message in place.

Text from outside never acts as markup in Slack:
    * Everything this module sends is Slack mrkdwn, and only a `Mrkdwn` is taken as handover's
      own: its ``*bold*``, links and mentions act. Build one with `mrkdwn` (handover's template,
      each value escaped once) or `esc` (a value shown as text). Any other text that reaches
      `SlackNotifier`, `post_text` or `reply_ephemeral` (a message's text, a block's mrkdwn) is
      escaped here (``&`` -> ``&amp;``, ``<`` -> ``&lt;``, ``>`` -> ``&gt;``): an alert's
      ``<!channel>`` or ``<https://x|Approve>``, a host's stderr, a name typed into a form are
      shown as typed. slack_sdk sends text as it is given; it has no escaping of its own.
    * Block texts are ``verbatim``: Slack does not turn a bare URL, ``#channel`` or ``@here`` in
      them into a link or a mention either.

The Web API base URL is Slack's unless `HANDOVER_SLACK_API_URL` is set (the tests' fake Slack).
"""

from __future__ import annotations

import logging
import os
import string
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from config.site import SecretError, Site

log = logging.getLogger("handover.slack")

DEFAULT_API_URL = "https://slack.com/api/"
TIMEOUT_S = 5
#: the progress message is edited at most this often
PROGRESS_EVERY_S = 2.0
#: Slack refuses a section text over 3000 characters
MAX_TEXT = 2900

Block = dict[str, Any]
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


class Mrkdwn(str):
    """Slack mrkdwn that handover wrote: sent as it is, its formatting, links and mentions act.

    Made by `mrkdwn` or `esc`, or ``Mrkdwn("...")`` around a literal of handover's own. Joining
    or adding with an f-string gives a plain ``str`` again, which the notifier escapes whole:
    join with ``Mrkdwn(", ").join(values)`` (each value escaped) or `mrkdwn`.
    """

    __slots__ = ()

    def join(self, parts: Iterable[str]) -> Mrkdwn:
        """The parts (each escaped unless it is `Mrkdwn`) with this separator between them."""
        return Mrkdwn(str.join(self, (esc(p) for p in parts)))


def esc(text: object) -> Mrkdwn:
    """`text` shown as text in Slack: ``&``, ``<`` and ``>`` escaped, so ``<!channel>`` or
    ``<https://evil|a link>`` is shown, never acted on. A `Mrkdwn` is returned as it is (text is
    escaped exactly once).

    Example:
        >>> esc("<!here> a & b")
        '&lt;!here&gt; a &amp; b'
    """
    if isinstance(text, Mrkdwn):
        return text
    return Mrkdwn(str(text).translate(_ESCAPES))


class _Escaping(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        shown = format(value, format_spec)
        return shown if isinstance(value, Mrkdwn) else esc(shown)


_FORMATTER = _Escaping()


def mrkdwn(template: str, /, *args: object, **values: object) -> Mrkdwn:
    """handover's own mrkdwn `template` (``str.format`` syntax) filled with `values`, each shown
    as text (`esc`) unless it is `Mrkdwn` already.

    Example:
        >>> mrkdwn("*{procedure}* started by {who}", procedure="clean-move", who="<!channel>")
        '*clean-move* started by &lt;!channel&gt;'
    """
    return Mrkdwn(_FORMATTER.vformat(template, args, values))


def _clip(text: Mrkdwn) -> Mrkdwn:
    if len(text) <= MAX_TEXT:
        return text
    return Mrkdwn(text[: MAX_TEXT - 20] + "\n... (truncated)")


def text_object(text: Mrkdwn) -> dict[str, Any]:
    """A Block Kit mrkdwn text object (verbatim: no automatic links or mentions)."""
    return {"type": "mrkdwn", "text": _clip(text), "verbatim": True}


def section(text: Mrkdwn) -> Block:
    """A section block."""
    return {"type": "section", "text": text_object(text)}


def context(text: Mrkdwn) -> Block:
    """A context block of one text."""
    return {"type": "context", "elements": [text_object(text)]}


def safe_blocks(blocks: Sequence[Block]) -> list[Block]:
    """The blocks as sent: every mrkdwn text that is not `Mrkdwn` escaped, each verbatim."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        if out.get("type") == "mrkdwn" and isinstance(out.get("text"), str):
            out["text"] = esc(out["text"])
            out.setdefault("verbatim", True)
        return out

    return [walk(b) for b in blocks]


def api_url() -> str:
    """The Slack Web API base URL (`HANDOVER_SLACK_API_URL` or Slack's)."""
    url = os.environ.get("HANDOVER_SLACK_API_URL", DEFAULT_API_URL)
    return url if url.endswith("/") else url + "/"


def slack_client(site: Site) -> WebClient:
    """A WebClient with the site's bot token.

    Raises:
        SecretError: the site has no Slack section or its token cannot be read.
    """
    if site.slack is None:
        raise SecretError(f"site {site.site} has no slack section")
    token = site.slack.bot_token.resolve().get_secret_value()
    return WebClient(token=token, base_url=api_url(), timeout=TIMEOUT_S)


#: where Slack's interaction response URLs live
SLACK_RESPONSE_HOST = "hooks.slack.com"


def response_url_allowed(url: str) -> bool:
    """Whether the gateway may POST to an interaction's response URL: Slack's own
    (``https://hooks.slack.com/...``), or the configured Web API's host in rehearsals
    (`HANDOVER_SLACK_API_URL`); never an address a request chose."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
    except ValueError:
        return False
    if u.scheme == "https" and u.hostname == SLACK_RESPONSE_HOST and u.port in (None, 443):
        return True
    configured = os.environ.get("HANDOVER_SLACK_API_URL")
    if not configured:
        return False
    c = urlsplit(configured)
    return (u.scheme, u.netloc) == (c.scheme, c.netloc)


def reply_ephemeral(response_url: str, text: str) -> None:
    """Tell a clicking user something only they see, on the interaction's response URL (best
    effort, bounded by `TIMEOUT_S`; a failure is logged, never raised). `text` is shown as text
    unless it is `Mrkdwn`."""
    from slack_sdk.webhook import WebhookClient

    if not response_url_allowed(response_url):
        log.warning("not replying on a response URL outside Slack: %s", response_url[:200])
        return
    try:
        resp = WebhookClient(response_url, timeout=TIMEOUT_S).send(
            text=esc(text), response_type="ephemeral", replace_original=False
        )
    except Exception as exc:  # noqa: BLE001 - a reply must never fail the gateway
        log.warning("could not reply on the response URL: %s", exc)
        return
    if resp.status_code >= 300:
        log.warning("the response URL answered %s: %s", resp.status_code, resp.body[:200])


class SlackNotifier:
    """The Slack thread of one procedure run (see the module's contract)."""

    def __init__(self, site: Site, client: WebClient | None, *, disabled_reason: str = "") -> None:
        self.site = site
        self.client = client
        self.channel = site.slack.channel if site.slack else ""
        self.channel_id: str | None = None
        self.root_ts: str | None = None
        self.approval_ts: str | None = None
        self.progress_ts: str | None = None
        self._progress_at = 0.0
        self._lock = threading.Lock()
        self.failures: list[str] = []
        self.disabled_reason = disabled_reason

    @classmethod
    def for_site(cls, site: Site) -> SlackNotifier:
        """A notifier for the site; a disabled one (saying why) when Slack is not configured."""
        if site.slack is None:
            return cls(site, None, disabled_reason="the site has no slack section")
        try:
            return cls(site, slack_client(site))
        except SecretError as exc:
            return cls(site, None, disabled_reason=f"Slack notifications off: {exc}")

    @property
    def enabled(self) -> bool:
        """Whether messages are being sent."""
        return self.client is not None

    def status(self) -> str:
        """One line for the run's report: how notification went."""
        if not self.enabled:
            return self.disabled_reason
        if self.failures:
            return (
                f"Slack notification failed {len(self.failures)} time(s) (the procedure went "
                f"on): {self.failures[-1]}"
            )
        return f"Slack thread in {self.channel}"

    # --- plumbing ------------------------------------------------------------------------------

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        if self.client is None:
            return None
        try:
            resp = self.client.api_call(method, json=kwargs)
            data: dict[str, Any] = dict(resp.data) if isinstance(resp.data, dict) else {}
            return data
        except SlackApiError as exc:
            error = exc.response.get("error", "unknown") if exc.response else "unknown"
            self._failed(f"{method}: Slack answered {error}")
        except Exception as exc:  # noqa: BLE001 - Slack must never stop a procedure
            self._failed(f"{method}: Slack unreachable ({type(exc).__name__}: {exc})")
        return None

    def _failed(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)
        log.warning("%s", what)

    def post(
        self, text: Mrkdwn, blocks: Sequence[Block] | None = None, *, in_thread: bool = True
    ) -> str | None:
        """Post a message (in the run's thread once it exists). Returns its ts or None.

        `text` (what notifications and clients without blocks show) and the blocks' mrkdwn are
        sent as they are only when they are `Mrkdwn`; any other text is escaped."""
        kwargs: dict[str, Any] = {"channel": self.channel_id or self.channel, "text": esc(text)}
        if blocks:
            kwargs["blocks"] = safe_blocks(blocks)
        if in_thread and self.root_ts:
            kwargs["thread_ts"] = self.root_ts
        data = self._call("chat.postMessage", **kwargs)
        if not data:
            return None
        self.channel_id = self.channel_id or data.get("channel")
        return str(data.get("ts")) if data.get("ts") else None

    def update(self, ts: str, text: Mrkdwn, blocks: Sequence[Block] | None = None) -> bool:
        """Edit a message in place (its text and blocks as `post` sends them)."""
        kwargs: dict[str, Any] = {
            "channel": self.channel_id or self.channel,
            "ts": ts,
            "text": esc(text),
            "blocks": safe_blocks(blocks or []),
        }
        return self._call("chat.update", **kwargs) is not None

    # --- what procedures say -------------------------------------------------------------------

    def start(self, text: Mrkdwn, blocks: Sequence[Block]) -> None:
        """Open the run's thread."""
        self.root_ts = self.post(text, blocks, in_thread=False)

    def step(self, text: Mrkdwn, blocks: Sequence[Block]) -> None:
        """One step's outcome sentence."""
        self.post(text, blocks)

    def progress(self, text: Mrkdwn, *, force: bool = False) -> None:
        """The live progress line: one message, edited in place, at most every few seconds."""
        now = time.monotonic()
        with self._lock:
            if not force and self.progress_ts and now - self._progress_at < PROGRESS_EVERY_S:
                return
            self._progress_at = now
            ts = self.progress_ts
        block = [context(esc(text))]
        if ts is None:
            new = self.post(text, block)
            with self._lock:
                self.progress_ts = new
        else:
            self.update(ts, text, block)

    def approval(self, text: Mrkdwn, blocks: Sequence[Block]) -> None:
        """Post the approval request (with its buttons)."""
        self.approval_ts = self.post(text, blocks)

    def decided(self, text: Mrkdwn, blocks: Sequence[Block]) -> None:
        """Replace the approval request by the decision (the buttons go)."""
        if self.approval_ts:
            self.update(self.approval_ts, text, blocks)
        self.post(text, blocks)

    def finish(
        self,
        text: Mrkdwn,
        blocks: Sequence[Block],
        root_text: Mrkdwn,
        root_blocks: Sequence[Block],
    ) -> None:
        """The end: a final message in the thread, and the thread's first message updated."""
        self.post(text, blocks)
        if self.root_ts:
            self.update(self.root_ts, root_text, root_blocks)


def post_text(client: WebClient, channel: str, thread_ts: str | None, text: Mrkdwn) -> None:
    """Post one line with `client` (in a thread when `thread_ts` is given), escaped unless it is
    `Mrkdwn`. Raises what slack_sdk raises."""
    client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=esc(text))
