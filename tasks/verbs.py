"""Every verb a plan's step may name, as one Prefect task with the one retry rule.

`run_step(shell, step)` runs the verb a `flows.plans.model.Step` names on its host and returns the
verb's `StepResult` (its outcome sentence); it retries transient SSH errors only
(`tasks.remote.TRANSIENT_RETRIES`). ``wait-drained`` and ``await-cutover`` are not here: they
wait on the executor's monitors, not on a host.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.plans.model import Step
from tasks import remote
from tasks.agents import clear_disabled, start_agents, stop_agents, write_disabled
from tasks.alias import move_service_alias
from tasks.channels import set_channels
from tasks.db_sessions import drop_sessions
from tasks.frontend import disable_frontend, enable_frontend, fence_epoch
from tasks.hand_over import hand_over
from tasks.outcome import StepResult
from tasks.remote import SiteShell
from tasks.standby import await_serving, start_standby
from tasks.upgrade import check_agents, configure_node, install_version, restart_agents


def run_verb(shell: SiteShell, step: Step) -> StepResult:
    """Run the verb of one step on its host (no retry; see `run_step` for the task).

    Raises:
        ValueError: the step names a verb that does not act on a host (``wait-drained``,
            ``await-cutover``).
        StepFailed: the verb's post-condition does not hold.
        SshError: the host could not be reached or refused a command.
    """
    host = step.host
    site = shell.site
    if step.verb == "set-inactive":
        return set_channels(shell, host, step.channels, "Inactive", read_first=step.read_first)
    if step.verb == "set-active":
        return set_channels(shell, host, step.channels, "Active", read_first=False)
    if step.verb == "write-disabled":
        return write_disabled(shell, host, step.agents)
    if step.verb == "clear-disabled":
        return clear_disabled(shell, host, step.agents)
    if step.verb == "stop":
        return stop_agents(
            shell, host, None if step.all_agents else step.agents, read_first=step.read_first
        )
    if step.verb == "start":
        return start_agents(shell, host, step.agents)
    if step.verb == "hand-over":
        (target,) = step.others
        return hand_over(shell, host, step.agents, step.channels, target)
    if step.verb == "start-standby":
        return start_standby(shell, host, step.agents, step.max_wait_s)
    if step.verb == "await-serving":
        return await_serving(shell, host, step.agents)
    if step.verb == "drop-sessions":
        if not step.agents:
            return drop_sessions(site, host)
        done = [drop_sessions(site, host, a) for a in step.agents]
        return done[0].model_copy(
            update={
                "changed": [c for r in done for c in r.changed],
                "sentence": "; ".join(r.sentence for r in done),
                "ended_at": done[-1].ended_at,
            }
        )
    if step.verb == "frontend-disable":
        return disable_frontend(shell, host, step.address or "-", step.seconds)
    if step.verb == "frontend-enable":
        assert step.epoch is not None
        return enable_frontend(shell, host, step.epoch)
    if step.verb == "fence-epoch":
        assert step.epoch is not None
        return fence_epoch(shell, host, step.epoch)
    if step.verb == "move-alias":
        assert step.epoch is not None
        return move_service_alias(site, step.expect, step.address, step.epoch, step.expect_epoch)
    if step.verb == "check-agents":
        return check_agents(shell, host, step.agents, step.others)
    if step.verb == "install-version":
        assert step.version is not None
        return install_version(shell, host, step.version)
    if step.verb == "configure-node":
        return configure_node(shell, host)
    if step.verb == "restart-agents":
        return restart_agents(shell, host, step.agents, step.version)
    raise ValueError(f"step {step.id}: the verb {step.verb!r} does not act on a host")


run_step = task(  # type: ignore[call-overload]
    run_verb,
    name="verb",
    task_run_name="{step.verb}-{step.host}",
    cache_policy=NO_CACHE,
    **remote.TRANSIENT_RETRIES,
)
