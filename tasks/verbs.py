"""What every verb does on a site, registered by its step class, and the one task that runs it.

`ACTS` maps each step class of `flows.plans.verbs` to its act: a function of the run's
`RunContext` and the step that returns the verb's `StepResult` (its outcome sentence) or raises.
`run_step(ctx, step)` is every act as one Prefect task with the one retry rule: transient SSH
errors only (`tasks.remote.TRANSIENT_RETRIES`), for the verbs that act on a host; the verbs that
wait on the run's monitors (``wait-drained``, ``await-cutover``) are not retried.

Adding a verb: its step class in `flows.plans.verbs`, its act below (or in the module of what it
acts on), and one entry in `ACTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.plans.step import Step
from flows.plans.verbs import (
    VERBS,
    AwaitCutover,
    AwaitServing,
    CheckAgents,
    ClearDisabled,
    ConfigureNode,
    DropSessions,
    FenceEpoch,
    FrontendDisable,
    FrontendEnable,
    HandOver,
    InstallVersion,
    MoveAlias,
    RestartAgents,
    SetActive,
    SetInactive,
    Start,
    StartStandby,
    Stop,
    WaitDrained,
    WriteDisabled,
)
from flows.plans.verbs.geo import (
    AwaitResolvers,
    DbReadOnly,
    PromoteReplica,
    RebuildReplica,
    ReplicateFrom,
    RepointNames,
    WaitApplied,
)
from tasks import geo, remote
from tasks.agents import clear_disabled, start_agents, stop_agents, write_disabled
from tasks.alias import move_service_alias
from tasks.channels import set_channels
from tasks.cutover import await_cutover
from tasks.db_sessions import drop_sessions
from tasks.drain import wait_drained
from tasks.frontend import disable_frontend, enable_frontend, fence_epoch
from tasks.hand_over import hand_over
from tasks.outcome import StepResult
from tasks.remote import SiteShell
from tasks.run_context import RunContext
from tasks.standby import await_serving, start_standby
from tasks.standby import forget as forget_standbys
from tasks.upgrade import check_agents, configure_node, install_version, restart_agents


@dataclass(frozen=True)
class Act:
    """What a verb does, and whether its task retries transient SSH errors."""

    run: Callable[[RunContext, Any], StepResult]
    #: retry transient SSH errors (a verb that waits on the run's monitors is not retried)
    retry_transient: bool = True


def _drop_sessions(ctx: RunContext, s: DropSessions) -> StepResult:
    if not s.agents:
        return drop_sessions(ctx.site, s.host)
    done = [drop_sessions(ctx.site, s.host, a) for a in s.agents]
    return done[0].model_copy(
        update={
            "changed": [c for r in done for c in r.changed],
            "sentence": "; ".join(r.sentence for r in done),
            "ended_at": done[-1].ended_at,
        }
    )


def _set_inactive(ctx: RunContext, s: SetInactive) -> StepResult:
    return set_channels(ctx.shell, s.host, s.channels, "Inactive", read_first=s.read_first)


def _set_active(ctx: RunContext, s: SetActive) -> StepResult:
    return set_channels(ctx.shell, s.host, s.channels, "Active", read_first=False)


def _stop(ctx: RunContext, s: Stop) -> StepResult:
    agents = None if s.all_agents else s.agents
    return stop_agents(ctx.shell, s.host, agents, read_first=s.read_first)


def _move_alias(ctx: RunContext, s: MoveAlias) -> StepResult:
    return move_service_alias(ctx.site, s.expect, s.address, s.epoch, s.expect_epoch)


def _write_disabled(ctx: RunContext, s: WriteDisabled) -> StepResult:
    return write_disabled(ctx.shell, s.host, s.agents)


def _clear_disabled(ctx: RunContext, s: ClearDisabled) -> StepResult:
    return clear_disabled(ctx.shell, s.host, s.agents)


def _start(ctx: RunContext, s: Start) -> StepResult:
    return start_agents(ctx.shell, s.host, s.agents)


def _start_standby(ctx: RunContext, s: StartStandby) -> StepResult:
    return start_standby(ctx.shell, s.host, s.agents, s.max_wait_s)


def _await_serving(ctx: RunContext, s: AwaitServing) -> StepResult:
    return await_serving(ctx.shell, s.host, s.agents)


def _hand_over(ctx: RunContext, s: HandOver) -> StepResult:
    return hand_over(ctx.shell, s.host, s.agents, s.channels, s.target)


def _frontend_disable(ctx: RunContext, s: FrontendDisable) -> StepResult:
    return disable_frontend(ctx.shell, s.host, s.address, s.seconds)


def _frontend_enable(ctx: RunContext, s: FrontendEnable) -> StepResult:
    return enable_frontend(ctx.shell, s.host, s.epoch)


def _fence_epoch(ctx: RunContext, s: FenceEpoch) -> StepResult:
    return fence_epoch(ctx.shell, s.host, s.epoch)


def _check_agents(ctx: RunContext, s: CheckAgents) -> StepResult:
    return check_agents(ctx.shell, s.host, s.agents, s.backup_hosts)


def _install_version(ctx: RunContext, s: InstallVersion) -> StepResult:
    return install_version(ctx.shell, s.host, s.version)


def _configure_node(ctx: RunContext, s: ConfigureNode) -> StepResult:
    return configure_node(ctx.shell, s.host)


def _restart_agents(ctx: RunContext, s: RestartAgents) -> StepResult:
    return restart_agents(ctx.shell, s.host, s.agents, s.version)


#: every verb's act, by its step class
ACTS: dict[type[Step], Act] = {
    SetInactive: Act(_set_inactive),
    SetActive: Act(_set_active),
    WaitDrained: Act(wait_drained, retry_transient=False),
    AwaitCutover: Act(await_cutover, retry_transient=False),
    WriteDisabled: Act(_write_disabled),
    ClearDisabled: Act(_clear_disabled),
    Stop: Act(_stop),
    Start: Act(_start),
    StartStandby: Act(_start_standby),
    AwaitServing: Act(_await_serving),
    HandOver: Act(_hand_over),
    DropSessions: Act(_drop_sessions),
    FrontendDisable: Act(_frontend_disable),
    FrontendEnable: Act(_frontend_enable),
    FenceEpoch: Act(_fence_epoch),
    MoveAlias: Act(_move_alias),
    CheckAgents: Act(_check_agents),
    InstallVersion: Act(_install_version),
    ConfigureNode: Act(_configure_node),
    RestartAgents: Act(_restart_agents),
    # the geo failover's verbs act on a site's database and on the DNS masters, not over SSH:
    # each bounds its own connections and is not retried on an SSH error
    DbReadOnly: Act(lambda ctx, s: geo.db_read_only(ctx.site, s), retry_transient=False),
    WaitApplied: Act(lambda ctx, s: geo.wait_caught_up(ctx.site, s), retry_transient=False),
    PromoteReplica: Act(lambda ctx, s: geo.promote_replica(ctx.site, s), retry_transient=False),
    RepointNames: Act(lambda ctx, s: geo.repoint_names(ctx.site, s), retry_transient=False),
    AwaitResolvers: Act(lambda ctx, s: geo.await_resolvers(ctx.site, s), retry_transient=False),
    ReplicateFrom: Act(lambda ctx, s: geo.follow(ctx.site, s), retry_transient=False),
    RebuildReplica: Act(lambda ctx, s: geo.rebuild(ctx.site, s), retry_transient=False),
}

_missing = set(VERBS.values()) - set(ACTS)
if _missing:  # a verb the plans may name but nobody can run: refuse at import, not mid-move
    raise ImportError("verbs without an act: " + ", ".join(sorted(c.__name__ for c in _missing)))


def run_verb(ctx: RunContext, step: Step) -> StepResult:
    """Run the verb of one step (no retry; see `run_step` for the task).

    Raises:
        StepFailed: the verb's post-condition does not hold.
        SshError: the host could not be reached or refused a command.
    """
    return ACTS[type(step)].run(ctx, step)


run_step = task(  # type: ignore[call-overload]
    run_verb,
    name="verb",
    task_run_name="{step.verb}-{step.host}",
    cache_policy=NO_CACHE,
    **remote.TRANSIENT_RETRIES,
)


def step_task(step: Step, *, retries: bool = True) -> Any:
    """The task that runs `step`: `run_step`, without retries for a verb that waits on the run
    (or when `retries` is False)."""
    if retries and ACTS[type(step)].retry_transient:
        return run_step
    return run_step.with_options(retries=0)


def end_run(shell: SiteShell) -> None:
    """Forget what the verbs keep for a run that ended (the standbys it launched)."""
    forget_standbys(shell)
