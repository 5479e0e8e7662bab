"""The channel verb: set channels Active or Inactive, idempotent and verified."""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from config.site import Site
from flows.plans.steps import command
from flows.plans.words import count
from tasks.outcome import StepFailed, StepResult, listing, now, was
from tasks.remote import SiteShell
from tasks.site_state import channel_states_from_db, read_channel_state

ChannelState = Literal["Active", "Inactive"]

log = logging.getLogger(__name__)


def set_channels(
    shell: SiteShell, host: str, channels: list[str], state: ChannelState, read_first: bool = True
) -> StepResult:
    """Set channels to `state`: with the site's `database.channel_set_statement` when it has
    one (from handover's machine), else, or for what the database did not take, with the
    profile's command run on `host`.

    Channels already in that state are left alone. Post-condition: each channel reads `state`
    (`read_states`: in the site's database when it has `database.channel_states_query`).
    With `read_first` False the command runs for every channel without reading it first (the
    command is harmless on a channel already in that state): setting a channel Active ends its
    downtime, and a read before it would only delay that.
    """
    site = shell.site
    verb = f"set-channels-{state.lower()}"
    started = now()
    unknown = [c for c in channels if c not in site.channels]
    if unknown:
        raise StepFailed(
            f"{host}: unknown channel(s) {', '.join(unknown)}; the site's channels are "
            f"{', '.join(site.channels)}",
            host=host,
            verb=verb,
        )
    before: dict[str, str | None] = dict.fromkeys(channels)
    if read_first:
        before.update(read_states(shell, host, channels))
    to_set = [c for c in channels if before[c] != state]
    same = [c for c in channels if c not in to_set]
    commands: list[str] = []
    acted: dt.datetime | None = None
    by_tool = to_set
    note = ""
    if to_set and site.database is not None and site.database.channel_set_statement:
        by_tool, note = _write_in_db(site, to_set, state)
        if len(by_tool) < len(to_set):
            commands.append(f"database: {site.database.channel_set_statement}")
            acted = now()
    failed: list[str] = []
    if by_tool:
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(by_tool)))) as ex:
            results = list(
                ex.map(
                    lambda c: shell.run(host, "set_channel_state", channel=c, state=state),
                    by_tool,
                )
            )
        commands += [r.command for r in results]
        acted = now()
        failed = [
            f"{c} (`{r.command}` exited {r.exit_code}: {(r.stderr or r.stdout).strip()[-200:]})"
            for c, r in zip(by_tool, results, strict=True)
            if not r.ok
        ]
    if to_set:
        after = read_states(shell, host, to_set)
        wrong = [c for c in to_set if after[c] != state]
        if failed or wrong:
            raise StepFailed(
                f"{host}: could not set {', '.join(failed or wrong)} {state}; channels already "
                f"set: {', '.join(c for c in to_set if after[c] == state) or 'none'}; run "
                f"`{command(site, 'set_channel_state', channel='CHANNEL', state=state)}` by hand "
                "or run the step again",
                host=host,
                verb=verb,
            )
    sentence = (
        f"{host}: set {count(len(to_set), 'channel')}{listing(to_set)} {state}"
        + (f", {len(same)} {was(len(same))} already {state}" if read_first else "")
        + note
    )
    return StepResult(
        host=host,
        verb=verb,
        changed=to_set,
        unchanged=same,
        sentence=sentence,
        commands=commands,
        started_at=started,
        ended_at=now(),
        acted_at=acted,
    )


def _write_in_db(site: Site, channels: list[str], state: str) -> tuple[list[str], str]:
    """Write the states with the site's `database.channel_set_statement`; the channels left for
    the command on the host (all of them when the database did not answer), and what the
    sentence says about it."""
    from tasks.adapters.db import DatabaseUnavailable, write_channel_states

    try:
        missed = write_channel_states(site, channels, state)
    except DatabaseUnavailable as exc:
        log.warning("%s; setting the channels with the command on the host instead", exc)
        return channels, " (with the command on the host: the database did not take the write)"
    if missed:
        log.warning(
            "database.channel_set_statement changed no row of %s; setting those with the "
            "command on the host",
            ", ".join(missed),
        )
        return missed, f" ({', '.join(missed)} with the command on the host)"
    return [], " (in the database)"


def read_states(shell: SiteShell, host: str, channels: list[str]) -> dict[str, str]:
    """Each channel's state: from the site's `database.channel_states_query` (one query from
    here, a few milliseconds) when it has one and it answers, else with the profile's command
    run on `host` (a tool's start over SSH, a few hundred): the check after a change sits on
    the move's critical path.

    Raises:
        PermanentSshError: the command failed or printed no state.
    """
    got = {c: st for c, st in channel_states_from_db(shell.site).items() if c in channels}
    rest = [c for c in channels if c not in got]
    if rest:
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(rest)))) as ex:
            got.update(
                zip(rest, ex.map(lambda c: read_channel_state(shell, host, c), rest), strict=True)
            )
    return got
