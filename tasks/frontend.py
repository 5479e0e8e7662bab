"""The front-end verbs: read a front end's role and epoch, disable it, enable it, fence.

Each runs the site's command profile (`Commands.frontend_*`) on the host through the run's SSH
client, is idempotent (a front end already in the wanted state is left alone) and verifies its
post-condition by reading the state again.
"""

from __future__ import annotations

import json

from flows.plans.switch import FrontendState
from tasks.adapters.ssh import CommandResult, SshError
from tasks.outcome import StepFailed, StepResult, now
from tasks.remote import SiteShell


def read_frontend(shell: SiteShell, host: str) -> FrontendState:
    """What `host`'s front end reports (``reachable`` False, with the error, when it cannot)."""
    try:
        r = shell.run(host, "frontend_status")
    except SshError as exc:
        return FrontendState(host=host, reachable=False, error=str(exc))
    return frontend_state(host, r)


def frontend_state(host: str, r: CommandResult) -> FrontendState:
    """The front end's state from what its `frontend_status` command printed."""
    if not r.ok:
        return FrontendState(
            host=host,
            reachable=False,
            error=f"`{r.command}` exited {r.exit_code}: {(r.stderr or r.stdout).strip()[-300:]}",
        )
    try:
        data = json.loads(r.stdout.strip().splitlines()[-1])
        return FrontendState(
            host=host,
            reachable=True,
            running=bool(data.get("running")),
            answers=bool(data.get("answers")),
            role=data.get("role"),
            epoch=data.get("epoch"),
            db_epoch=data.get("db_epoch"),
            db_holder=data.get("db_holder"),
            db_error=data.get("db_error"),
        )
    except (ValueError, IndexError, AttributeError) as exc:
        return FrontendState(
            host=host,
            reachable=False,
            error=f"`{r.command}` printed no state ({exc}): {r.stdout.strip()[-200:]!r}",
        )


def _run(shell: SiteShell, host: str, verb: str, command: str, **values: str) -> str:
    r = shell.run(host, command, timeout=None, stdin=None, **values)
    if not r.ok:
        raise StepFailed(
            f"{host}: `{r.command}` exited {r.exit_code}: {(r.stderr or r.stdout).strip()[-300:]}",
            host=host,
            verb=verb,
        )
    return r.command


def disable_frontend(shell: SiteShell, host: str, redirect: str, seconds: int) -> StepResult:
    """Make `host`'s front end a slave; redirect clients to `redirect` for `seconds` (``-``:
    none). Post-condition: it reports the slave role."""
    verb = "frontend-disable"
    started = now()
    command = _run(
        shell, host, verb, "frontend_disable", redirect=redirect, seconds=str(int(seconds))
    )
    after = read_frontend(shell, host)
    if after.role != "slave":
        raise StepFailed(
            f"{host}: the front end still reports the role {after.role} after `{command}`",
            host=host,
            verb=verb,
        )
    where = f", redirecting clients to {redirect} for {seconds} s" if redirect != "-" else ""
    return StepResult(
        host=host,
        verb=verb,
        changed=[host],
        sentence=f"{host}: front end disabled (slave{where})",
        commands=[command],
        started_at=started,
        ended_at=now(),
    )


def enable_frontend(shell: SiteShell, host: str, epoch: int) -> StepResult:
    """Make `host`'s front end the master with `epoch` (claimed in the database first).
    Post-condition: it answers as the master with `epoch`, the database's epoch."""
    verb = "frontend-enable"
    started = now()
    before = read_frontend(shell, host)
    if before.serving_master and before.epoch == epoch:
        return StepResult(
            host=host,
            verb=verb,
            unchanged=[host],
            sentence=f"{host}: front end already the master with epoch {epoch}",
            started_at=started,
            ended_at=now(),
        )
    command = _run(shell, host, verb, "frontend_enable", epoch=str(epoch))
    after = read_frontend(shell, host)
    if not (after.serving_master and after.epoch == epoch):
        raise StepFailed(
            f"{host}: after `{command}` the front end reports role {after.role}, epoch "
            f"{after.epoch}, database epoch {after.db_epoch}, answering: {after.answers}",
            host=host,
            verb=verb,
        )
    return StepResult(
        host=host,
        verb=verb,
        changed=[host],
        sentence=f"{host}: front end enabled as the master with epoch {epoch}",
        commands=[command],
        started_at=started,
        ended_at=now(),
    )


def fence_epoch(shell: SiteShell, host: str, epoch: int) -> StepResult:
    """Raise the database's epoch to `epoch` (run on `host`, which reaches the database).
    Post-condition: the database's epoch is `epoch`."""
    verb = "fence-epoch"
    started = now()
    before = read_frontend(shell, host)
    if before.db_epoch == epoch:
        return StepResult(
            host=host,
            verb=verb,
            unchanged=["epoch"],
            sentence=f"the database's epoch is already {epoch}",
            started_at=started,
            ended_at=now(),
        )
    command = _run(shell, host, verb, "frontend_fence", epoch=str(epoch))
    after = read_frontend(shell, host)
    if after.db_epoch != epoch:
        raise StepFailed(
            f"after `{command}` on {host} the database's epoch is {after.db_epoch}, not {epoch}"
            + (f" ({after.db_error})" if after.db_error else ""),
            host=host,
            verb=verb,
        )
    return StepResult(
        host=host,
        verb=verb,
        changed=["epoch"],
        sentence=f"the database's epoch raised from {before.db_epoch} to {epoch} (from {host}): "
        "an older master can no longer write",
        commands=[command],
        started_at=started,
        ended_at=now(),
    )


def read_maintenance(shell: SiteShell, host: str) -> tuple[bool | None, str]:
    """The cluster's maintenance mode as asked on `host`: (True/False, "") or (None, why)."""
    try:
        r = shell.run(host, "cluster_maintenance")
    except SshError as exc:
        return None, str(exc)
    if not r.ok:
        return None, f"`{r.command}` exited {r.exit_code}: {(r.stderr or r.stdout).strip()[-200:]}"
    answer = r.stdout.strip().lower()
    if answer in ("true", "on", "yes", "1"):
        return True, ""
    if answer in ("false", "off", "no", "0"):
        return False, ""
    return None, f"`{r.command}` printed {answer[:80]!r}"
