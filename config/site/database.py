"""The service's database: how handover reaches it, and the site's own queries (each checked to
be one statement of the expected kind)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.site.base import SiteModel
from config.site.secrets import SecretRef


def _one_select(v: str | None, rows: str) -> str | None:
    """A site-configured query: one SELECT, nothing after it."""
    if v is not None and (not re.match(r"(?is)^\s*select\s", v) or ";" in v):
        raise ValueError(f"must be one SELECT statement without ';' returning {rows}")
    return v


_UPDATE_EXAMPLE = ", e.g. UPDATE channels SET state = :state WHERE name = :channel"


def _one_channel_update(v: str | None) -> str | None:
    """A site-configured channel write: one UPDATE binding :state and :channel."""
    if v is None:
        return v
    if not re.match(r"(?is)^\s*update\s", v) or ";" in v:
        raise ValueError("must be one UPDATE statement without ';'" + _UPDATE_EXAMPLE)
    missing = [b for b in (":state", ":channel") if not re.search(rf"{b}\b", v)]
    if missing:
        raise ValueError(
            "must bind :state (the new state) and :channel (the channel's name); missing "
            + " and ".join(missing)
            + _UPDATE_EXAMPLE
        )
    return v


class Database(SiteModel):
    """The service's database; handover uses it to find and kill DB sessions (the DB lock)."""

    #: the database server's kind
    kind: Literal["oracle", "mariadb", "postgresql"]
    #: its address
    host: str
    #: its port
    port: int = Field(ge=1, le=65535)
    #: the database (or Oracle service) name
    database: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.$-]{1,128}$")]
    #: the account handover connects as (it must list and kill sessions)
    user: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_$#]{1,128}$")]
    #: the account's password: a reference (`{env: NAME}`, `{file: PATH}`, `{prefect_secret:
    #: BLOCK}`), never the value
    password: SecretRef
    #: the bound of every database call: connecting, and each query or kill (a hung
    #: `gv$session` query must not hold an emergency move)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: one SELECT returning (channel, state) rows for the channels; when set, a snapshot reads
    #: every channel's state with it (one database round trip from handover's machine) instead
    #: of one `commands.channel_state` per channel over SSH, and falls back to those commands
    #: when the database does not answer. Example (the lab): ``SELECT name, state FROM channels``
    channel_states_query: str | None = None
    #: one SELECT returning a (channel, seconds still needed) row for each transfer running now;
    #: when set, a pipelined clean move with a `cutover_window_s` chooses each channel's moment
    #: of going Inactive so that its drain is short (from file sizes and the channel's
    #: throughput on a real FTS database). Example (the lab): ``SELECT channel, greatest(0,
    #: extract(epoch FROM started_at) + duration_s - extract(epoch FROM clock_timestamp())) FROM
    #: jobs WHERE state = 'Active'``
    transfer_eta_query: str | None = None
    #: one UPDATE binding ``:state`` and ``:channel`` that sets one channel's state; when set,
    #: the channel verbs write the state with it (a few milliseconds from handover's machine)
    #: instead of running `commands.set_channel_state` on a host over SSH (a tool's start, a
    #: few hundred), and fall back to that command when the database does not answer or the
    #: statement changes no row. It bypasses the channel tool: a site sets it only where the
    #: tool does nothing beyond that write. Needs `channel_states_query`, which reads the write
    #: back. Example (the lab): ``UPDATE channels SET state = :state WHERE name = :channel``
    channel_set_statement: str | None = None

    _one_select = field_validator("channel_states_query")(
        classmethod(
            lambda cls, v: _one_select(
                v, "(channel, state) rows, e.g. SELECT name, state FROM channels"
            )
        )
    )
    _one_eta_select = field_validator("transfer_eta_query")(
        classmethod(
            lambda cls, v: _one_select(v, "a (channel, seconds still needed) row per transfer")
        )
    )
    _one_update = field_validator("channel_set_statement")(
        classmethod(lambda cls, v: _one_channel_update(v))
    )

    @model_validator(mode="after")
    def _write_read_back(self) -> Database:
        if self.channel_set_statement is not None and self.channel_states_query is None:
            raise ValueError(
                "channel_set_statement needs channel_states_query, which reads each write back "
                "(e.g. SELECT name, state FROM channels)"
            )
        return self

    @property
    def names_programs(self) -> bool:
        """Whether each session records its client program (PostgreSQL's
        ``application_name``, Oracle's program or module), so that one agent's session can be
        told from another's of the same machine; MariaDB records none."""
        return self.kind in ("postgresql", "oracle")

    @property
    def sees_lock_release(self) -> bool:
        """Whether a hot-standby hand-over can set a channel Active from here the moment its
        agent's session ends (`tasks.hand_over`): the database names programs and the site
        has a `channel_set_statement`."""
        return self.names_programs and self.channel_set_statement is not None
