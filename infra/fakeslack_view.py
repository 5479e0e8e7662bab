"""The fake Slack's threads as a web page (``GET /_fake/view``): what an operator would see in the
channel, for rehearsals and the documentation's pictures.

Slack's mrkdwn is rendered as far as handover's messages use it: ``*bold*``, ``_italic_``,
```` `code` ````, fenced blocks, links ``<url|text>``, mentions ``<@U…>`` and ``<!here>``; the
blocks handover posts (section, context, actions with buttons, header, divider). Message text
reaches the fake as Slack would receive it: ``&``, ``<`` and ``>`` that are not markup are
already entities, so only the control sequences in angle brackets are parsed here.
"""

from __future__ import annotations

import datetime as dt
import re
from html import escape
from typing import Any

_CONTROL = re.compile(r"<([^<>]*)>")
_FENCE = re.compile(r"```(.*?)```", re.S)
_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_([^_\n]+)_(?![\w_])")
_EMOJI_CODE = re.compile(r":([a-z0-9_+-]+):")
#: the emoji handover's messages use (others are shown by name, as Slack shows an unknown one)
EMOJI = {
    "arrows_counterclockwise": "\U0001f504",
    "bell": "\U0001f514",
    "calendar": "\U0001f4c5",
    "hourglass_flowing_sand": "\u23f3",
    "leftwards_arrow_with_hook": "\u21a9\ufe0f",
    "memo": "\U0001f4dd",
    "no_entry": "\u26d4",
    "no_entry_sign": "\U0001f6ab",
    "octagonal_sign": "\U0001f6d1",
    "raising_hand": "\U0001f64b",
    "small_blue_diamond": "\U0001f539",
    "warning": "\u26a0\ufe0f",
    "white_check_mark": "\u2705",
    "x": "\u274c",
}

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 15px;
       background: #fff; color: #1d1c1d; margin: 0; }
.channel { padding: 12px 20px; border-bottom: 1px solid #ddd; font-weight: 700; font-size: 18px; }
.msg { display: flex; padding: 8px 20px; }
.msg.reply { padding-left: 64px; }
.avatar { width: 36px; height: 36px; border-radius: 4px; background: #2c3e50; color: #fff;
          font-weight: 700; display: flex; align-items: center; justify-content: center;
          margin-right: 8px; flex: none; }
.who { font-weight: 900; } .when { color: #616061; font-size: 12px; margin-left: 6px; }
.edited { color: #616061; font-size: 12px; }
.block { margin: 4px 0; line-height: 1.46; white-space: pre-wrap; }
.context { color: #616061; font-size: 13px; }
.header { font-weight: 900; font-size: 17px; }
hr { border: 0; border-top: 1px solid #ddd; }
code { background: #f6f6f6; border: 1px solid #e1e1e1; border-radius: 3px; padding: 1px 3px;
       color: #c01343; font-size: 13px; }
pre { background: #f8f8f8; border: 1px solid #e1e1e1; border-radius: 4px; padding: 8px;
      font-size: 13px; white-space: pre-wrap; }
.mention { background: #e8f5fa; color: #1264a3; border-radius: 3px; padding: 0 2px; }
.button { display: inline-block; border: 1px solid #bbb; border-radius: 4px; padding: 4px 12px;
          margin-right: 8px; font-weight: 700; font-size: 14px; }
.button.primary { background: #007a5a; color: #fff; border-color: #007a5a; }
.button.danger { background: #e01e5a; color: #fff; border-color: #e01e5a; }
"""


def mrkdwn(text: str, users: dict[str, str] | None = None) -> str:
    """Slack mrkdwn (as received, entities already escaped) as HTML."""
    users = users or {}
    stash: list[str] = []

    def keep(html: str) -> str:
        stash.append(html)
        return f"\x00{len(stash) - 1}\x00"

    def control(m: re.Match[str]) -> str:
        inner = m.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            name = users.get(target[1:], target[1:])
            return keep(f'<span class="mention">@{escape(name)}</span>')
        if target.startswith("!"):
            return keep(f'<span class="mention">@{escape(target[1:].split("^")[0])}</span>')
        if target.startswith("#"):
            return keep(f'<span class="mention">#{escape(label or target[1:])}</span>')
        return keep(f'<a href="{escape(target)}">{label or escape(target)}</a>')

    text = _FENCE.sub(lambda m: keep(f"<pre>{m.group(1).strip(chr(10))}</pre>"), text)
    text = _CODE.sub(lambda m: keep(f"<code>{m.group(1)}</code>"), text)
    text = _CONTROL.sub(control, text)
    text = _EMOJI_CODE.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), text)
    text = _BOLD.sub(r"<b>\1</b>", text)
    text = _ITALIC.sub(r"<i>\1</i>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: stash[int(m.group(1))], text)


def _text(obj: dict[str, Any] | None, users: dict[str, str]) -> str:
    if not obj:
        return ""
    if obj.get("type") == "mrkdwn":
        return mrkdwn(str(obj.get("text", "")), users)
    return escape(str(obj.get("text", "")))


def _block(block: dict[str, Any], users: dict[str, str]) -> str:
    kind = block.get("type")
    if kind == "section":
        parts = [_text(block.get("text"), users)]
        parts += [_text(f, users) for f in block.get("fields") or []]
        return f'<div class="block">{"<br>".join(p for p in parts if p)}</div>'
    if kind == "context":
        items = " · ".join(_text(e, users) for e in block.get("elements") or [])
        return f'<div class="block context">{items}</div>'
    if kind == "header":
        return f'<div class="block header">{_text(block.get("text"), users)}</div>'
    if kind == "divider":
        return "<hr>"
    if kind == "actions":
        buttons = []
        for e in block.get("elements") or []:
            style = escape(str(e.get("style", "")))
            label = _text(e.get("text"), users)
            buttons.append(f'<span class="button {style}">{label}</span>')
        return f'<div class="block">{"".join(buttons)}</div>'
    return f'<div class="block context">[{escape(str(kind))} block]</div>'


def _message(msg: dict[str, Any], users: dict[str, str], reply: bool) -> str:
    when = dt.datetime.fromtimestamp(float(msg["ts"]), dt.UTC).strftime("%H:%M:%S UTC")
    blocks = msg.get("blocks")
    body = (
        "".join(_block(b, users) for b in blocks)
        if blocks
        else f'<div class="block">{mrkdwn(str(msg.get("text", "")), users)}</div>'
    )
    edited = ' <span class="edited">(edited)</span>' if msg.get("edits") else ""
    return (
        f'<div class="msg{" reply" if reply else ""}"><div class="avatar">h</div><div>'
        f'<span class="who">handover</span><span class="when">{when}</span>{edited}'
        f"{body}</div></div>"
    )


def page(
    record: dict[str, Any],
    users: dict[str, str] | None = None,
    channels: dict[str, str] | None = None,
) -> str:
    """Every channel's messages, each thread's replies under its first message, as HTML.

    Args:
        record: `FakeSlack.record()`.
        users: Slack user ids to names, for mentions.
        channels: channel names to ids (`FakeSlack.channels`), to show a channel by its name.
    """
    users = users or {}
    names = {cid: name.lstrip("#") for name, cid in (channels or {}).items()}
    messages = [m for m in record.get("messages", []) if not m.get("deleted")]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>"]
    for channel in sorted({m["channel"] for m in messages}):
        out.append(f'<div class="channel"># {escape(names.get(channel, channel))}</div>')
        roots = [m for m in messages if m["channel"] == channel and not m.get("thread_ts")]
        for root in roots:
            out.append(_message(root, users, reply=False))
            for r in messages:
                if r.get("thread_ts") == root["ts"] and r["ts"] != root["ts"]:
                    out.append(_message(r, users, reply=True))
    out.append("</body></html>")
    return "\n".join(out)
