"""The hot-standby hand-over: stop an agent on the source whose standby waits for its DB lock
on the target, and set its channel Active the moment the database shows that the agent let go.

The channel's downtime ends when it is Active and an agent serves it. After a plain stop the
channel waits for the stop command to return (the agent's exit, the init script's own wait, the
SSH round trip) and for the check after it, a few hundred milliseconds, although the agent gave
up its lock earlier: the standby takes the lock then. An agent whose DB session has ended holds
no lock and cannot start a transfer (its next session would have to take the lock, which the
standby waits for), so its channel may go Active then. With the site's database able to tell
one agent's session from another's and a `database.channel_set_statement`
(`config.site.Database.sees_lock_release`), the verb:

1. lists the agent's sessions from the source, on a connection the process keeps
   (`tasks.adapters.db_link.borrowed`: the move's channel writes opened it, so no login waits);
2. runs the stop command (the profile's `stop_agent`) and, while it runs, lists the sessions
   every `WATCH_S`; once none of those it saw first is left, writes the channels Active on the
   same connection;
3. waits for the stop command and checks that no process of the agent runs (`stop_agents`);
4. sets what it did not write (no session seen, a refused write, no row changed) with the
   channel verb, as after a plain stop; reads every channel back.

Post-condition: no process of the agents runs on the source, and each channel reads Active.
Once the session has ended and the channel is Active, a stop that then fails its check (the
process still listed, or the host stopped answering) does not fail the step: the service is
already served from the target, and the step's result asks a human to check the process. A stop
that fails while the session is still open fails the step with nothing written (the channel
stays Inactive, as after a failed plain stop). An error after the stop carries the stopped
agents in `stopped_agents`, for the run's ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from contextlib import ExitStack

from config.site import short_name
from flows.plans.steps import command
from tasks.adapters.db import DatabaseUnavailable
from tasks.adapters.db_link import DbLink, borrowed
from tasks.agents import stop_agents
from tasks.channels import set_channels
from tasks.db_sessions import machine_identity
from tasks.outcome import StepFailed, StepResult, now
from tasks.remote import SiteShell

log = logging.getLogger(__name__)

#: how often the agent's sessions are listed while its stop runs
WATCH_S = 0.02


class _Stop(threading.Thread):
    """The stop command and its check, in a thread of its own."""

    def __init__(self, shell: SiteShell, host: str, agents: list[str]) -> None:
        super().__init__(name=f"hand-over-stop-{host}", daemon=True)
        self.shell, self.host, self.agents = shell, host, agents
        self.result: StepResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = stop_agents(self.shell, self.host, self.agents, read_first=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the verb
            self.error = exc


def hand_over(
    shell: SiteShell, host: str, agents: list[str], channels: list[str], target: str
) -> StepResult:
    """Stop `agents` on `host` (their standbys wait for the lock on `target`) and set
    `channels` Active as soon as the database shows the agents' sessions from `host` ended.

    Raises:
        StepFailed: an agent still ran after its stop while its session was open, or a channel
            could not be set Active.
        SshError: the source could not be reached for the stop (nothing written).
    """
    site = shell.site
    verb = "hand-over"
    started = now()
    with ExitStack() as stack:
        link: DbLink | None = None
        seen: set[str] = set()
        why_not = ""
        names, address = machine_identity(site, host)
        if site.database is None or not site.database.sees_lock_release:
            why_not = "the site's database cannot tell the agent's session"
        else:
            try:
                link = stack.enter_context(borrowed(site))
                seen = {s.id for a in agents for s in link.sessions(names, address, a)}
                if not seen:
                    why_not = f"no DB session of it from {host} was seen"
            except DatabaseUnavailable as exc:
                log.warning("%s; the channels are set Active after the stop", exc)
                why_not, link = "the database did not answer", None
        stop = _Stop(shell, host, agents)
        stop.start()
        written: list[str] = []
        let_go: dt.datetime | None = None
        acted: dt.datetime | None = None
        try:
            while link is not None and seen and stop.is_alive():
                if not {s.id for a in agents for s in link.sessions(names, address, a)} & seen:
                    let_go = now()
                    missed = link.write_channel_states(channels, "Active")
                    written = [c for c in channels if c not in missed]
                    acted = now() if written else None
                    break
                stop.join(WATCH_S)
        except DatabaseUnavailable as exc:
            log.warning("%s; the channels are set Active after the stop", exc)
            why_not, link = "the database stopped answering", None
        finally:
            stop.join()
        human: list[str] = []
        if stop.error is not None:
            if not written:
                raise stop.error
            human.append(
                f"{host}: {', '.join(agents)} let go of its DB lock and {', '.join(written)} "
                f"went Active, but its stop then failed ({str(stop.error)[:200]}): check on "
                f"{host} that no process of it is left, and kill it if one is"
            )
        try:
            rest = [c for c in channels if c not in written]
            by_verb = (
                set_channels(shell, target, rest, "Active", read_first=False) if rest else None
            )
            if written:
                states = link.channel_states() if link is not None else {}
                wrong = [c for c in written if states.get(c) != "Active"]
                if wrong:
                    raise StepFailed(
                        f"{host}: {', '.join(wrong)} read {states.get(wrong[0], 'nothing')} "
                        "after the database took the write; set it Active by hand "
                        f"(`{command(site, 'set_channel_state', channel=wrong[0], state='Active')}`"
                        ") and check database.channel_set_statement",
                        host=host,
                        verb=verb,
                    )
        except BaseException as exc:
            exc.stopped_agents = agents  # type: ignore[attr-defined]
            raise
    if written:
        how = (
            f"{', '.join(written)} Active as soon as its DB session ended, before the stop returned"
        )
        if by_verb is not None:
            how += f"; {by_verb.sentence}"
    else:
        how = f"{', '.join(channels)} Active after the stop" + (f" ({why_not})" if why_not else "")
    sentence = f"{host}: stopped {', '.join(short_name(a) for a in agents)}; {how}"
    if human:
        sentence += "; " + human[0]
    return StepResult(
        host=host,
        verb=verb,
        changed=[*agents, *channels],
        sentence=sentence,
        commands=stop.result.commands if stop.result else [],
        started_at=started,
        ended_at=now(),
        acted_at=acted or (by_verb.acted_at if by_verb else None),
        measures=(
            {"active_after_let_go_s": round((acted - let_go).total_seconds(), 3)}
            if acted and let_go
            else {}
        ),
        human=human,
    )
