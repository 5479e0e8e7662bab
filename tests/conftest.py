"""Shared fixtures: the lab (real sshd, PostgreSQL, namespaces) for tests, isolated from a demo lab.

Tests that need the lab call `require_lab()`: when something is missing it skips with what to
install, except in CI (`CI=true`) where a missing piece fails the run.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_site
from config.site import Site
from infra.lab.lab import Lab, derive_site_file, missing_prerequisites
from tasks.remote import SiteShell

ROOT = Path(__file__).resolve().parent.parent
LAB_SITE = ROOT / "config" / "sites" / "lab.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"
# a real Oracle cannot be had on the project's machines: that module runs where one is named
collect_ignore = [] if os.environ.get("HANDOVER_ORACLE_DSN") else ["test_oracle_live.py"]
# the test server's telemetry writes race with the runs' writes on its SQLite file
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the servers of this session keep leases on disk, as `handover server start` does, under a home
# of their own (the file storage's expiry index must not be shared with another session's)
os.environ.setdefault(
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
    "prefect.server.concurrency.lease_storage.filesystem",
)
_PREFECT_HOME = tempfile.mkdtemp(prefix="handover-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
# test labs get loopback blocks 127.0.N.x and DB ports 20000+N; two test sessions on one machine
# (a developer's and CI's) start from different N. The ports lie below the kernel's ephemeral
# range (32768-60999): there, any client socket of the run may hold the port when the lab binds.
# below 240: the benches place their labs at 244-250
# `make test` runs two groups of modules at once (`tests/run-groups`): each gets its own block of
# lab numbers (HANDOVER_TEST_LAB_BASE) and of daemon addresses (HANDOVER_TEST_DAEMON_OCTET)
_lab_numbers = itertools.count(
    int(os.environ.get("HANDOVER_TEST_LAB_BASE") or 10 + (os.getpid() % 35) * 6)
)
LAB_DB_PORT_BASE = 20000
#: tests that run HA group daemons on the machine put them on 127.DAEMON_OCTET.x.y
DAEMON_OCTET = int(os.environ.get("HANDOVER_TEST_DAEMON_OCTET") or 100 + os.getpid() % 100)

#: fixtures that start servers of the test session (a Prefect server, a stack of processes)
SERVER_FIXTURES = frozenset({"prefect_api", "pool_api", "pool_deploy", "stack"})
#: the tiers: every test has exactly one, by what it needs (docs/explanations/testing.md)
TIERS = ("unit", "server", "lab")
IS_ROOT = os.geteuid() == 0


def _tier(item: pytest.Item) -> str:
    """The tier of a test: `lab` when it needs root and the lab's Debian packages (marked so, by
    hand or for using a `lab` fixture), `server` when it starts servers (a Prefect server...),
    else `unit` (Python alone: what `make check` runs)."""
    names = set(getattr(item, "fixturenames", ()))
    if "lab" in names or any(
        item.get_closest_marker(m) for m in ("lab", "pacemaker", "monitoring")
    ):
        return "lab"
    if names & SERVER_FIXTURES or item.get_closest_marker("server"):
        return "server"
    return "unit"


def pytest_itemcollected(item: pytest.Item) -> None:
    """Give each test its tier marker as it is collected, before `-m` selects on it."""
    item.add_marker(_tier(item))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """After `-m` selected: without root (outside CI), leave out the selected tests that need
    it (the session then ends non-zero, saying so); keep only this process's group of modules
    when `make test` runs several at once (HANDOVER_TEST_GROUP of HANDOVER_TEST_GROUPS)."""
    dropped: list[pytest.Item] = []
    if not IS_ROOT and not IN_CI:
        _NEED_ROOT.extend(i for i in items if i.get_closest_marker("lab"))
        dropped += _NEED_ROOT
    group = os.environ.get("HANDOVER_TEST_GROUP")
    if group:
        dropped += _other_groups(items, int(os.environ.get("HANDOVER_TEST_GROUPS", "3")), group)
    if dropped:
        gone = set(map(id, dropped))
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if id(i) not in gone]


def _other_groups(items: list[pytest.Item], groups: int, group: str) -> list[pytest.Item]:
    """The tests of the groups other than `group` (`tests/groups.py` splits the modules)."""
    from tests.groups import load_durations, split

    if not group.isdigit() or not 1 <= int(group) <= groups:
        raise pytest.UsageError(f"HANDOVER_TEST_GROUP={group!r}: use 1 to {groups}")
    counts: dict[str, int] = {}
    for i in items:
        counts[i.path.name] = counts.get(i.path.name, 0) + 1
    # the machine has one Pacemaker cluster: the modules that start it share a group
    together = {i.path.name for i in items if i.get_closest_marker("pacemaker")}
    mine = set(split(counts, load_durations(), groups, together)[int(group) - 1])
    return [i for i in items if i.path.name not in mine]


#: the tests left out for want of root (`pytest_collection_modifyitems`)
_NEED_ROOT: list[pytest.Item] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run without root that left out tests fails, so nobody mistakes it for the whole suite."""
    _write_durations()
    if _NEED_ROOT and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _NEED_ROOT:
        terminalreporter.write_line(
            f"{len(_NEED_ROOT)} tests need root and were not run: run `sudo make test` "
            "(it installs the lab's Debian packages)",
            red=True,
            bold=True,
        )


#: seconds per module of this run (setup, call and teardown), for `tests/groups.py`
_DURATIONS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    _DURATIONS[module] = _DURATIONS.get(module, 0.0) + report.duration


def _write_durations() -> None:
    """Write this run's durations where `tests/run-groups` asked (HANDOVER_TEST_DURATIONS_OUT)."""
    out = os.environ.get("HANDOVER_TEST_DURATIONS_OUT")
    if out and _DURATIONS:
        import json

        Path(out).write_text(json.dumps(_DURATIONS))


#: the test running now (`require` checks its tier)
_CURRENT: list[pytest.Item] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _CURRENT[:] = [item]


def _check_tier(need: str, what: str) -> None:
    """Fail a test whose tier does not allow `need` (`server` or `lab`): its marker lies, and
    `make check` or a run without root would pick it wrongly."""
    if not _CURRENT:
        return
    item = _CURRENT[0]
    allowed = {"server": ("server", "lab"), "lab": ("lab",)}[need]
    if not any(item.get_closest_marker(t) for t in allowed):
        pytest.fail(
            f"{item.nodeid} needs {what} but is not marked {' or '.join(allowed)} "
            "(tests/conftest.py: TIERS)",
            pytrace=False,
        )


def require(ok: bool, what: str, *, need: str = "server") -> None:
    """Skip (developer machine) or fail (CI) when a prerequisite is missing.

    Args:
        ok: whether the prerequisite is there.
        what: what is missing, with the package that provides it.
        need: the tier the prerequisite makes the test (`server`, or `lab` for root): a test
            of a lower tier fails, whether the prerequisite is there or not.
    """
    _check_tier(need, what)
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI: missing prerequisite: {what}", pytrace=False)
    pytest.skip(f"missing prerequisite: {what}")


def require_lab() -> None:
    """The lab's prerequisites (root, sshd, PostgreSQL, nft, util-linux)."""
    missing = missing_prerequisites()
    require(
        not missing, "; ".join(missing) + " (run `make test` as root: it installs them)", need="lab"
    )


def make_test_site(tmp: Path, name: str, octet: int, db_port: int, **lab: object) -> Path:
    """A copy of the lab site with its own state dir, addresses and DB port, so tests never touch
    a lab an operator runs with config/sites/lab.yaml; short lock wait and transfers."""
    return derive_site_file(
        LAB_SITE,
        tmp / f"{name}.yaml",
        name=name,
        octet=octet,
        db_port=db_port,
        state_dir=Path("/var/tmp/handover-lab") / f"{name}-{os.getpid()}",
        lab={
            "lock_wait_s": 3.0,
            # the lab's own tick: each lab's daemon, agents and database work once per tick, and
            # at 0.1 s two groups' labs took a fifth of the 2 cores (sampled over a run)
            "tick_s": 0.2,
            **lab,
            "transfers": {
                "short_s": [0.3, 1.0],
                "long_s": [2.0, 3.0],
                "long_fraction": 0.2,
                "seed": 7,
            },
        },
    )


class RunningLab:
    """A started lab and its site, for tests."""

    def __init__(self, site_file: Path) -> None:
        self.site_file = site_file
        self.site: Site = load_site(site_file)
        self.lab = Lab(self.site)
        #: the tests' own SSH client for the lab (flows open theirs)
        self.shell = SiteShell(self.site)

    def agents_on(self, host: str) -> list[str]:
        """Names of the agents whose primary is `host`."""
        return [a.name for a in self.site.agents_on(host)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    """A fresh lab for the test module, stopped (and checked) afterwards."""
    yield from start_lab(tmp_path_factory)


def start_lab(
    tmp_path_factory: pytest.TempPathFactory,
    alerts: dict[str, object] | None = None,
    *,
    hagd: bool = False,
    hagd_watch: list[str] | None = None,
    monitoring: bool = False,
) -> Iterator[RunningLab]:
    """The `lab` fixture's body; `alerts` overrides fields of the site's `alerts:` section (a
    module whose alerts must not fall into an earlier test's dedup window); `hagd` runs the HA
    group daemon on the front-end hosts, and on the `hagd_watch` hosts in a watch group."""
    require_lab()
    tmp = tmp_path_factory.mktemp("lab")
    # one address block and DB port per module, so a module's leftovers cannot disturb another
    n = next(_lab_numbers)
    site_file = make_test_site(tmp, f"labtest{n}", n, LAB_DB_PORT_BASE + n)
    if alerts or hagd_watch:
        import yaml

        data = yaml.safe_load(site_file.read_text())
        data["alerts"].update(alerts or {})
        if hagd_watch:
            data["lab"].setdefault("hagd", {})["watch"] = hagd_watch
        site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    running = RunningLab(site_file)
    running.lab.up(hagd=hagd, monitoring=monitoring)
    try:
        yield running
    finally:
        running.shell.close()
        report = running.lab.down()
        assert report["leftovers"] == [], report
        running.lab.remove_state()


def stays(predicate: object, seconds: float, what: str, interval: float = 0.2) -> None:
    """Fail as soon as `predicate()` turns false within `seconds` (something that must not
    happen, watched for longer than it would take to happen)."""
    import time

    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            pytest.fail(f"{what}: no longer true", pytrace=False)
        time.sleep(interval)


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `predicate()` until it returns a truthy value; fail after `timeout` seconds."""
    import time

    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def final_run(run_id: object) -> Any:
    """The flow run `run_id` once its state is final (a `FlowRun`), else None."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)  # type: ignore[arg-type]
    return run if run.state is not None and run.state.is_final() else None


def wait_final_or_explain(run_id: object, timeout: float, logs: dict[str, Path]) -> Any:
    """Wait for a flow run to end and return it; on a timeout, fail with its state history,
    the last lines it logged and the tails of `logs` (name -> file: the processes that run it),
    which say who took the run and where it stopped."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    try:
        return wait_for(lambda: final_run(run_id), timeout, f"run {run_id} to end")
    except pytest.fail.Exception:
        with get_client(sync_client=True) as client:
            history = [
                (s.type.value, s.name, str(s.timestamp), (s.message or "")[:200])
                for s in client.read_flow_run_states(run_id)  # type: ignore[arg-type]
            ]
            newest = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=30,
                sort=LogSort.TIMESTAMP_DESC,
            )
            lines = [f"{entry.timestamp} {entry.message[:300]}" for entry in reversed(newest)]
        tails = {}
        for name, log in logs.items():
            try:
                tails[name] = log.read_text(errors="replace")[-3000:]
            except OSError as exc:
                tails[name] = f"unreadable: {exc}"
        pytest.fail(
            f"run {run_id} did not end in {timeout} s; states: {history}; its last log lines: "
            f"{lines}; process logs: {tails}",
            pytrace=False,
        )


def wait_boot_agents_gave_up(running: RunningLab, host: str, timeout: float = 30) -> None:
    """After a crashed host's reboot: wait until its boot-time `service transfer-agents start`
    has reported every agent as failed (they wait for locks the database still holds).

    The host's sshd answers before that start has even launched the agents, and an agent is not
    yet edguser's in its first moments, so "ps shows no agent" can hold before they ran at all.
    """
    log = running.lab.paths.host_dir(host) / "boot-agents.log"
    names = [a.name for a in running.site.agents_on(host)]

    def gave_up() -> bool:
        text = log.read_text() if log.exists() else ""
        return all(f"Starting {n}: [FAILED]" in text for n in names)

    wait_for(gave_up, timeout, f"{host}'s boot-time agents to give up on their locks")


def db_sessions(running: RunningLab, address: str) -> list[tuple[int, str]]:
    """(backend pid, application name) of the lab DB sessions coming from an address."""
    import contextlib

    with contextlib.closing(running.lab.db.connect()) as conn:
        rows = conn.run(
            "SELECT pid, application_name FROM pg_stat_activity WHERE host(client_addr) = :a",
            a=address,
        )
    return [(int(r[0]), str(r[1])) for r in rows]


def kill_sessions(running: RunningLab, address: str, application: str | None = None) -> int:
    """Terminate the lab DB sessions from an address (optionally one agent's); returns how many."""
    import contextlib

    with contextlib.closing(running.lab.db.connect()) as conn:
        rows = conn.run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE host(client_addr) = :a "
            "AND (CAST(:n AS text) IS NULL OR application_name = :n)",
            a=address,
            n=application,
        )
    return len(rows)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real (temporary) Prefect server for the whole test session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def reject_paused_runs() -> list[str]:
    """Reject every run still paused for approval (a test that failed before deciding): it then
    ends and frees its service lock at once, instead of holding it for the approval timeout and
    failing the tests after it. Returns the ids it rejected."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from flows.approval import resume_with_input

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            )
        )
    import time

    rejected = []
    for run in runs:
        # a loaded server may fail a request: try a few times before giving the run up
        for attempt in range(5):
            try:
                resume_with_input(run.id, run_input={"decision": "reject", "who": "test teardown"})
            except Exception:  # retried, then left for the approval timeout
                time.sleep(0.5 * (attempt + 1))
                continue
            rejected.append(str(run.id))
            break
    return rejected


def place_on_primaries(running: RunningLab) -> None:
    """Put every agent back on its primary host, listed disabled on its backup, channels Active."""
    from tasks import agents as verbs
    from tasks.channels import set_channels
    from tasks.site_state import snapshot_site

    site = running.site
    shell = running.shell
    snap = snapshot_site(shell)
    in_place = all(snap.where(a.name) == [a.primary] for a in site.service.agents) and all(
        sorted(h.disabled) == sorted(a.name for a in site.service.agents if a.backup == h.host)
        for h in snap.hosts
    )
    if in_place and set(snap.channels.values()) == {"Active"}:
        return
    by_host: dict[str, list[str]] = {}
    for a in site.service.agents:
        for h in snap.where(a.name):
            if h != a.primary:
                by_host.setdefault(h, []).append(a.name)
    for host, names in by_host.items():
        verbs.stop_agents(shell, host, names)
    for box in site.hosts:
        backups = [a.name for a in site.service.agents if a.backup == box.name]
        primaries = [a.name for a in site.service.agents if a.primary == box.name]
        if backups:
            verbs.write_disabled(shell, box.name, backups)
        if primaries:
            verbs.clear_disabled(shell, box.name, primaries)
            verbs.start_agents(shell, box.name, primaries)
    set_channels(shell, site.hosts[0].name, site.channels, "Active")


def submit_long_job(lab: RunningLab, channel: str, seconds: float) -> int:
    """Submit one transfer of `seconds` on a channel and wait until it runs; its job id."""
    import contextlib

    from tasks.site_state import snapshot_site

    with contextlib.closing(lab.lab.db.connect()) as conn:
        rows = conn.run(
            "INSERT INTO jobs (channel, state, duration_s) VALUES (:c, 'Pending', :d) RETURNING id",
            c=channel,
            d=seconds,
        )
    job = int(rows[0][0])
    wait_for(
        lambda: any(
            t.transfer_id == str(job)
            for h in snapshot_site(lab.shell).hosts
            for t in h.transfer_processes
        ),
        15,
        f"long transfer {job} to run",
    )
    return job


def end_transfer(lab: RunningLab, job: int) -> None:
    """End a long transfer early (by PID, wherever it runs), so later tests need not drain it."""
    from tasks.site_state import snapshot_site

    for h in snapshot_site(lab.shell).hosts:
        for t in h.transfer_processes:
            if t.transfer_id == str(job):
                lab.lab.exec(h.host, ["kill", str(t.pid)])


def cli_move_argv(lab: RunningLab, from_host: str, to_host: str) -> list[str]:
    """`handover run clean-move ... --yes --json` for the lab, as an operator types it."""
    from infra.move_process import clean_move_argv

    return clean_move_argv(lab.site_file, from_host, to_host)


def forget_automatic_switches(running: RunningLab) -> None:
    """No automatic switch on record for the lab's site: the anti-flapping rule starts afresh
    (a test's automatic switch would otherwise make the next one wait for a human)."""
    from prefect.variables import Variable

    Variable.unset(f"switch-last-automatic-{running.site.site}")
