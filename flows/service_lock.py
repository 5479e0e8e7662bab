"""One procedure per service at a time (ARCHITECTURE.md, rule 5).

The lock is a Prefect global concurrency limit of 1 slot per service, acquired with a lease that
the holder renews in the background: a killed flow stops renewing and the server reclaims the slot
(lease duration plus the repossessor's loop, 15 s by default). The holder also records itself in a
Prefect Variable, so a refusal names the run that holds the service, and so a run on the same
machine can take over at once from a holder whose process has died.

A busy service refuses at once, with exceptions the caller asks for (`wait_s`): a run of the
same procedure for another subject waits, bounded, for the holder to let go (a second host's
emergency move behind the first's, so that two boxes of one service lost together are both
moved), and so does a run behind a short repair it names (`behind`: a geo failover behind the geo
watch). Each service has its own limit: procedures on different services never wait for each
other.

Only the server's own answer "the slot is taken" (HTTP 423) means busy. A server that is slow to
answer (a loaded machine, a busy SQLite) or that fails is a different refusal: `LockUnavailable`,
which says so instead of blaming a run that does not exist.

A Prefect server restart must not leave the service locked for good. Three things see to it:

* `handover server start` (and the benches and tests) keep leases on disk
  (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``, `LEASE_STORAGE`), so a lease outlives a restart
  and its holder's renewals and release still match it;
* a holder whose lease the server no longer knows (a server on the in-memory default that
  restarted) gives its slot back by name instead of by lease when it ends;
* a run refused the slot frees it at once when the holder recorded in the Variable is a flow run
  that has finished, crashed or does not exist, or a process on this machine that has died, and
  when the slot has been taken for longer than `ORPHAN_AFTER_S` with no holder recorded at all.

A holder whose run crashed left its procedure half done, and the crash recovery starts the same
procedure again with the same parameters (`infra/crash_recovery.py`). For `RECOVERY_RESERVE_S`
after the crash its slot is that new run's: another procedure is refused meanwhile (as it would
be were the holder alive), so that the recovery does not lose the service to whichever run asks
first. A run of the recovery itself that finds the service held by a live holder waits for it, up
to `RECOVERY_WAIT_S`, rather than leave the site half done.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEASE_S = float(os.environ.get("HANDOVER_LOCK_LEASE_S", "60"))
#: the server's lease storage that survives a restart (Prefect's file-based one; the servers
#: handover starts use it: `infra.prefect_server`)
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: a slot taken this long ago with no holder recorded is an orphan (a holder records itself
#: right after it acquires the slot)
ORPHAN_AFTER_S = 30.0
# How long the server may take to answer one acquisition request. It is no wait for the slot
# (a held slot is refused at once); it bounds a slow or hung API.
ACQUIRE_TIMEOUT_S = float(os.environ.get("HANDOVER_LOCK_ACQUIRE_TIMEOUT_S", "30"))
#: seconds between attempts of a run that waits for the service (`wait_s`)
QUEUE_POLL_S = 1.0
#: seconds between renewals of the holder's lease: a renewal that fails is tried again three
#: times before the lease runs out
RENEW_EVERY_S = LEASE_S / 4
#: how long a crashed holder's slot is kept for the run that recovers its procedure (the
#: recovery automation starts it within seconds of the crash mark)
RECOVERY_RESERVE_S = 120.0
#: how long a run of the recovery waits for a service held by another, live, procedure
RECOVERY_WAIT_S = float(os.environ.get("HANDOVER_LOCK_RECOVERY_WAIT_S", "600"))


class ServiceLockError(RuntimeError):
    """The service could not be locked; nothing was changed. The message says why."""


class ServiceBusy(ServiceLockError):
    """Another procedure runs for this service; the message names it."""


class LockUnavailable(ServiceLockError):
    """The Prefect API did not grant or refuse the lock (slow, failing or unreachable)."""


def _slot_taken(exc: BaseException) -> bool:
    """Whether an acquisition error is the server's "slot taken" answer (HTTP 423)."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 423


def _acquire_lease(name: str) -> UUID:
    """Take the slot of limit `name` with a lease of `LEASE_S`, asking the server once.

    The request runs in a thread of its own, so that `ACQUIRE_TIMEOUT_S` bounds it whole: the
    Prefect client retries a request that timed out or met a busy server. A lease granted after
    the bound is given back at once.

    Returns:
        The lease's id.

    Raises:
        TimeoutError: the server did not answer within `ACQUIRE_TIMEOUT_S`.
        httpx.HTTPStatusError: the server refused (423: the slot is taken).
        LookupError: the server granted no slot (the limit does not exist).
    """
    answer: concurrent.futures.Future[UUID] = concurrent.futures.Future()

    def request() -> None:
        try:
            with get_client(sync_client=True) as client:
                response = client.increment_concurrency_slots_with_lease(
                    [name], 1, "concurrency", LEASE_S
                )
            granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
            if not granted.limits:
                raise LookupError(f"the server has no concurrency limit {name}")
        except Exception as exc:  # noqa: BLE001 - the caller's to judge, if it still waits
            if answer.set_running_or_notify_cancel():
                answer.set_exception(exc)
            return
        if answer.set_running_or_notify_cancel():
            answer.set_result(granted.lease_id)
        else:  # the caller gave up meanwhile: nobody holds this lease
            with contextlib.suppress(httpx.HTTPError, ObjectNotFound):
                with get_client(sync_client=True) as client:
                    client.release_concurrency_slots_with_lease(granted.lease_id)

    context = contextvars.copy_context()  # the caller's Prefect settings (API URL) and run
    threading.Thread(
        target=context.run, args=(request,), name=f"{name}-acquire", daemon=True
    ).start()
    concurrent.futures.wait([answer], timeout=ACQUIRE_TIMEOUT_S)
    if answer.cancel():
        raise TimeoutError(f"no answer to the request for {name} within {ACQUIRE_TIMEOUT_S} s")
    return answer.result()


@contextlib.contextmanager
def _renewing(lease: UUID) -> Iterator[None]:
    """Renew `lease` every `RENEW_EVERY_S` in a background thread while the block runs.

    A renewal that fails is tried again at the next period; a lease the server no longer knows
    (a restarted server with in-memory lease storage) is not renewed any more. Either way the
    block goes on: the holder's Variable still names it, and `_free` gives its slot back.
    """
    stop = threading.Event()
    log = logging.getLogger("handover.service_lock")

    def renew() -> None:
        while not stop.wait(RENEW_EVERY_S):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(lease, LEASE_S)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 404:
                    log.debug("lease %s: the server no longer knows it", lease)
                    return
                log.debug("lease %s: renewal failed: %s", lease, exc)
            except Exception as exc:  # noqa: BLE001 - a renewal never fails the procedure
                log.debug("lease %s: renewal failed: %s", lease, exc)

    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(renew,), name=f"renew-{lease}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)


def lock_name(site: str, service: str) -> str:
    """The concurrency limit's name for a service."""
    return re.sub(r"[^a-z0-9-]", "-", f"handover-{site}-{service}".lower())


def _holder_var(name: str) -> str:
    return name.replace("-", "_") + "_holder"


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"{holder.get('procedure', '?')} run {holder.get('flow_run_name', '?')} "
        f"(id {holder.get('flow_run_id', '?')}, started {holder.get('since', '?')} by pid "
        f"{holder.get('pid', '?')} on {holder.get('hostname', '?')})"
    )


def _read_holder(client: Any, name: str) -> dict[str, Any] | None:
    var = client.read_variable_by_name(_holder_var(name))
    if var is None:
        return None
    try:
        data: dict[str, Any] = json.loads(str(var.value))
    except ValueError:
        return None
    return data


def _holder_run_over(client: Any, holder: dict[str, Any]) -> tuple[str | None, Any]:
    """Why the holder's flow run cannot hold the service any more (finished, crashed,
    unknown), or None when it may still run (or the holder names no run); and the run read."""
    run_id = holder.get("flow_run_id")
    if not run_id:
        return None, None
    try:
        run = client.read_flow_run(UUID(str(run_id)))
    except (ObjectNotFound, ValueError):
        return f"its flow run {run_id} does not exist", None
    if run.state is not None and run.state.is_final():
        return f"its flow run {run.name} is {run.state.name}", run
    return None, run


def _kept_for_recovery(run: Any, now: dt.datetime, dead: bool = False) -> bool:
    """Whether a dead holder's slot is kept for the run that recovers its procedure: the holder
    is a deployment's run (the crash recovery starts those again) that crashed less than
    `RECOVERY_RESERVE_S` ago, or whose process is known dead (`dead`) and which is not marked
    yet; and this run is not that recovery (another deployment, or other parameters)."""
    if run is None or run.state is None or run.deployment_id is None:
        return False
    if run.state.is_crashed():
        if (now - run.state.timestamp).total_seconds() >= RECOVERY_RESERVE_S:
            return False
    elif not (dead and not run.state.is_final()):
        return False
    ctx = FlowRunContext.get()
    me = ctx.flow_run if ctx is not None else None
    return not (
        me is not None
        and me.id != run.id
        and me.deployment_id == run.deployment_id
        and me.parameters == run.parameters
    )


def _recovering() -> bool:
    """Whether this run is one the crash recovery started (it finishes a crashed procedure)."""
    from flows.attempt import RESUME_NAME

    ctx = FlowRunContext.get()
    by = ctx.flow_run.created_by if ctx is not None and ctx.flow_run is not None else None
    return by is not None and str(by.display_value or "") == RESUME_NAME


def _orphaned(client: Any, name: str) -> bool:
    """A slot taken for longer than `ORPHAN_AFTER_S` with no holder recorded."""
    limit = client.read_global_concurrency_limit_by_name(name)
    if limit.active_slots < limit.limit or limit.updated is None:
        return False
    age = (dt.datetime.now(dt.UTC) - limit.updated).total_seconds()
    return bool(age > ORPHAN_AFTER_S)


def _free(client: Any, name: str, lease: str | None) -> None:
    """Give back a slot: by its lease when the server knows it, else by name."""
    if lease:
        try:
            client.renew_concurrency_lease(UUID(lease), LEASE_S)
        except (ObjectNotFound, httpx.HTTPStatusError, ValueError):
            pass  # the server forgot the lease (restart with in-memory storage): by name
        else:
            client.release_concurrency_slots_with_lease(UUID(lease))
            return
    # occupancy is only a statistic here; the server wants it positive
    client.release_concurrency_slots([name], 1, 1.0)


def _holder_dead_here(holder: dict[str, Any]) -> bool:
    if holder.get("hostname") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError):
        return False
    return False


@contextlib.contextmanager
def service_lock(
    site: str,
    service: str,
    procedure: str,
    *,
    subject: str = "",
    wait_s: float = 0.0,
    behind: frozenset[str] = frozenset(),
) -> Iterator[None]:
    """Hold the service for the duration of the block, or raise.

    Args:
        site: the site's name.
        service: the service's name (or a part of it with a lock of its own).
        procedure: who holds it (named to a procedure refused meanwhile).
        subject: what the procedure works on (a host), recorded with the holder.
        wait_s: while the service is held by the same procedure for another subject (a second
            host's emergency move behind the first's), wait up to this long for it instead of
            being refused; anything else holding the service refuses at once.
        behind: procedures this run also waits for, up to `wait_s` (short read-and-repair
            runs such as the geo watch: a failover waits for its repair rather than failing).

    Raises:
        ServiceBusy: another procedure holds the service (or still held it after `wait_s`); the
            message names it and says what to do.
        LockUnavailable: the Prefect API neither granted nor refused the lock in time.
    """
    name = lock_name(site, service)
    with get_client(sync_client=True) as client:
        # read first: creating one that exists makes the server log an integrity error
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    lease: UUID | None = None
    recovering = _recovering()
    if recovering:
        wait_s = max(wait_s, RECOVERY_WAIT_S)
    deadline = time.monotonic() + wait_s
    freed: set[str] = set()  # holders whose slot this run freed (once each)
    waiting_for: str | None = None
    while lease is None:
        try:
            lease = _acquire_lease(name)
            break
        except TimeoutError:
            raise LockUnavailable(
                f"refused: the Prefect API did not answer the lock request for service {service} "
                f"of site {site} within {ACQUIRE_TIMEOUT_S:.0f} s; nothing was changed. Check the "
                "Prefect server (`handover server status`) and run again"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any failure but "taken" is the API's
            if not _slot_taken(exc):
                raise LockUnavailable(
                    f"refused: the Prefect API could not lock service {service} of site {site} "
                    f"({exc}); nothing was changed. Check the Prefect server and run again"
                ) from None
            with get_client(sync_client=True) as client:
                holder = _read_holder(client, name)
                stale = None
                kept = False
                if holder:
                    stale, run = _holder_run_over(client, holder)
                    dead_here = _holder_dead_here(holder)
                    if dead_here:
                        stale = f"its process {holder.get('pid')} has died"
                    if stale and _kept_for_recovery(run, dt.datetime.now(dt.UTC), dead_here):
                        kept, stale = True, None
                elif _orphaned(client, name):
                    stale = f"nobody recorded holding it for over {ORPHAN_AFTER_S:.0f} s"
                key = str(holder.get("lease")) if holder else "nobody"
                if stale and key not in freed:
                    # free the slot now rather than after the lease (or never, if its lease
                    # was lost with a restarted server)
                    freed.add(key)
                    _log_takeover(name, holder, stale)
                    with contextlib.suppress(ObjectNotFound):
                        _free(client, name, holder.get("lease") if holder else None)
                        if holder:
                            client.delete_variable_by_name(_holder_var(name))
                    continue
            queued = holder is not None and (
                (holder.get("procedure") == procedure and holder.get("subject", "") != subject)
                or holder.get("procedure") in behind
                # a recovery waits for whatever holds the service: it finishes a half-done
                # procedure
                or recovering
            )
            if wait_s > 0 and holder is None and time.monotonic() < deadline:
                # taken a moment ago by a run that has not yet recorded itself (two hosts'
                # alerts at once): look again rather than refuse a run that may wait for it
                time.sleep(QUEUE_POLL_S)
                continue
            if queued and time.monotonic() < deadline:
                assert holder is not None
                if waiting_for != holder.get("flow_run_id"):
                    waiting_for = holder.get("flow_run_id")
                    _log_wait(name, holder, deadline - time.monotonic())
                time.sleep(QUEUE_POLL_S)
                continue
            who = (
                _describe(holder)
                if holder
                else "another run, which holds the lock but has not yet recorded its name"
            )
            if kept:
                who += (
                    ", which crashed: the crash recovery is starting its procedure again, and "
                    "the service is kept for it"
                )
            waited = f" (waited {wait_s:.0f} s for it)" if queued and wait_s > 0 else ""
            raise ServiceBusy(
                f"refused: a procedure is already running for service {service} of site {site}: "
                f"{who}{waited}. Wait for it to end, or cancel it in the Prefect UI; a run whose "
                f"process died releases the service within {LEASE_S + 15:.0f} s"
            ) from None
    assert lease is not None
    ctx = FlowRunContext.get()
    holder = {
        "procedure": procedure,
        "subject": subject,
        "flow_run_id": str(ctx.flow_run.id) if ctx and ctx.flow_run else None,
        "flow_run_name": ctx.flow_run.name if ctx and ctx.flow_run else None,
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "lease": str(lease),
    }
    try:
        with get_client(sync_client=True) as client:
            _write_holder(client, name, holder)
        with _renewing(lease):
            yield
    finally:
        with get_client(sync_client=True) as client:
            with contextlib.suppress(ObjectNotFound):
                client.delete_variable_by_name(_holder_var(name))
            with contextlib.suppress(ObjectNotFound):
                _free(client, name, str(lease))


def _log_wait(name: str, holder: dict[str, Any], left_s: float) -> None:
    """Say, in the run's log when there is one, which run this one queues behind."""
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("handover.service_lock")
    logger.info(
        "%s is held by %s for %s; waiting up to %.0f s for it",
        name,
        _describe(holder),
        holder.get("subject") or "?",
        left_s,
    )


def _log_takeover(name: str, holder: dict[str, Any] | None, why: str) -> None:
    import logging

    logging.getLogger("handover.service_lock").warning(
        "%s: freeing the slot of %s: %s", name, _describe(holder) if holder else "nobody", why
    )


def _write_holder(client: Any, name: str, holder: dict[str, Any]) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    value = json.dumps(holder)
    try:
        client.create_variable(VariableCreate(name=_holder_var(name), value=value))
    except ObjectAlreadyExists:
        client.update_variable(VariableUpdate(name=_holder_var(name), value=value))
