"""`handover serve`: serve every deployment of deployments/prefect.yaml from one process.

Each entry of the file becomes one deployment per site and service, named by
`deployment_name` (``clean-move@lab:fts-lab``), so that several sites registered on one Prefect
server live side by side, each with its own `site_file` parameter and its own triggers; one
`handover serve` may serve several sites (`serve_all`).

Every flow run gets a process of its own. `prefect.serve()` starts it with `python -m
prefect.engine`, which imports Prefect and the flow's module afresh: about 1.5 s on a 2-core
machine, most of an alert's way to its emergency move. `handover serve` instead registers each
flow with the runner (`Runner.add_flow`), so that the runner hands the flow object itself to the
run's process, and starts that process from a fork server (`--start forkserver`, the default): a
single-threaded process, started with the serve process, that has imported Prefect and every
served flow's module once and forks a ready interpreter for each run. The run itself is the same
call, with the same arguments, environment and settings as under `spawn` (`--start spawn`,
Prefect's own start for a flow handed over); only the imports are already done. Flows are
pickled by reference. Both rely on Prefect's private parts (flows/prefect_private.py). `handover
bench alert` measures both start methods side by side.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import yaml

from config.site import Site
from flows.prefect_private import (
    FLOW_ENGINE,
    never_signal_ended_processes,
    pickle_flows_by_reference,
    start_flow_runs_with,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS_FILE = ROOT / "deployments" / "prefect.yaml"


class DeploymentsError(ValueError):
    """deployments/prefect.yaml is malformed, or two site files would register the same
    deployments; the message names the entry and the field, or the two files."""


#: an entry's name in deployments/prefect.yaml (its flow's name): no ``@`` nor ``:``, which
#: separate it from the site and the service in a deployment's name
ENTRY_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def deployment_name(entry: str, site: Site) -> str:
    """The name of an entry's deployment for one site and service: ``<entry>@<site>:<service>``,
    e.g. ``clean-move@lab:fts-lab``.

    The one place a deployment's name is made: the gateway, the workers and the tools that find
    a deployment by name call it. Prefect accepts ``@`` and ``:`` in a deployment's name (it
    refuses ``/ % & < >``), in the API's lookup by name (``clean-move/clean-move@lab:fts-lab``)
    and in ``prefect deployment run``; a site's and a service's names are lower-case letters,
    digits and ``-`` (`config.site.HostName`), so the name splits back unambiguously
    (`deployment_entry`). The procedure comes first, so that the UI's list, sorted by name,
    groups each procedure's sites together, and ``clean-move@*`` matches it everywhere.

    Example:
        >>> deployment_name("clean-move", load_site("config/sites/lab.yaml"))  # doctest: +SKIP
        'clean-move@lab:fts-lab'
    """
    return f"{entry}@{site.site}:{site.service.name}"


def deployment_entry(name: str) -> str:
    """The entry (procedure) of a deployment's name: ``clean-move`` for
    ``clean-move@lab:fts-lab`` (a name without a site is its own entry)."""
    return name.partition("@")[0]


def read_deployments(path: Path = DEPLOYMENTS_FILE) -> list[dict[str, Any]]:
    """The `deployments:` entries of a prefect.yaml, checked for what serving needs."""
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("deployments")
    if not isinstance(entries, list) or not entries:
        raise DeploymentsError(f"{path}: no `deployments:` list")
    for i, d in enumerate(entries):
        for key in ("name", "entrypoint"):
            if not isinstance(d.get(key), str):
                raise DeploymentsError(f"{path}: deployments[{i}].{key} is missing")
        if not ENTRY_NAME_RE.fullmatch(d["name"]):
            raise DeploymentsError(
                f"{path}: deployments[{i}].name must be lower-case letters, digits and - "
                f"(each site's deployment is named <name>@<site>:<service>; got {d['name']!r})"
            )
        if not re.fullmatch(r"[A-Za-z0-9_/]+\.py:[A-Za-z_][A-Za-z0-9_]*", d["entrypoint"]):
            raise DeploymentsError(
                f"{path}: deployments[{i}].entrypoint must look like flows/file.py:function"
            )
        pool = d.get("work_pool")
        if pool is not None and not (isinstance(pool, dict) and isinstance(pool.get("name"), str)):
            raise DeploymentsError(
                f"{path}: deployments[{i}].work_pool must be a mapping with a `name` "
                "(the work pool `handover deploy` creates and `handover worker --pool` serves)"
            )
        if d.get("site_needs") not in (None, *SITE_NEEDS):
            raise DeploymentsError(
                f"{path}: deployments[{i}].site_needs must be one of {', '.join(SITE_NEEDS)} "
                f"(what a site must have for the deployment to be its; got {d['site_needs']!r})"
            )
        if d.get("schedule_from") not in (None, "maintenance-windows"):
            raise DeploymentsError(
                f"{path}: deployments[{i}].schedule_from must be maintenance-windows "
                f"(got {d['schedule_from']!r})"
            )
    return entries


#: what an entry's `site_needs` may ask of a site: the FTS agents (`service.kind:
#: fts2-agents`), or tools replicated between sites (a `geo:` section)
SITE_NEEDS = ("agents", "geo")


def entry_applies(entry: dict[str, Any], site: Site) -> bool:
    """Whether a deployments file entry is one of `site`'s deployments: the site has what its
    `site_needs` asks (`SITE_NEEDS`; no `site_needs`: every site)."""
    need = entry.get("site_needs")
    if need == "agents":
        return site.service.kind == "fts2-agents"
    if need == "geo":
        return site.geo is not None
    return True


def window_schedules(name: str, site: Site) -> list[Any]:
    """A cron schedule at the opening of each of the procedure's maintenance windows (in the
    window's time zone): `schedule_from: maintenance-windows` in prefect.yaml."""
    from prefect.schedules import Cron

    return [
        Cron(w.cron, timezone=w.timezone, slug=f"{name}-window-{i + 1}")
        for i, w in enumerate(site.policy(name).windows)
    ]


def load_flow(entrypoint: str) -> Any:
    """Import the flow object named by `flows/file.py:function` (as a module of this package)."""
    module = import_module(_module_of(entrypoint))
    return getattr(module, entrypoint.rsplit(":", 1)[1])


def site_triggers(name: str, specs: list[dict[str, Any]], site: Site) -> list[Any]:
    """An entry's `triggers:` for one site and service: each matches only the events of that
    site and service (``handover.site``, ``handover.service``) and its window is the site's
    `alerts.dedup_window_s`.

    Raises:
        DeploymentsError: a trigger is malformed (the message names it).
    """
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from pydantic import TypeAdapter, ValidationError

    out = []
    for i, spec in enumerate(specs, start=1):
        spec = {**spec, "name": spec.get("name") or f"{deployment_name(name, site)}: alert {i}"}
        spec["match"] = {
            **(spec.get("match") or {}),
            "handover.site": site.site,
            "handover.service": site.service.name,
        }
        if site.alerts is not None and spec.get("posture", "Reactive") == "Reactive":
            spec["within"] = site.alerts.dedup_window_s
        try:
            out.append(TypeAdapter(DeploymentEventTrigger).validate_python(spec))
        except ValidationError as exc:
            raise DeploymentsError(f"deployment {name}: triggers[{i - 1}]: {exc}") from None
    return out


def deployment_specs(
    site_file: str, path: Path = DEPLOYMENTS_FILE
) -> list[tuple[Any, dict[str, Any]]]:
    """Each entry's flow and its deployment settings for one site: named by `deployment_name`,
    with `site_file` as the default site, tagged with the site and the service, and the entry's
    triggers (automations) bound to that site and service."""
    from prefect.types.entrypoint import EntrypointType

    from config.loader import load_site

    site = load_site(site_file)
    out = []
    for d in read_deployments(path):
        if not entry_applies(d, site):
            continue  # e.g. the geo failover on a site without replicated tools
        fl = load_flow(d["entrypoint"])
        params = {**(d.get("parameters") or {}), "site_file": str(Path(site_file).resolve())}
        settings = {
            "name": deployment_name(d["name"], site),
            "parameters": params,
            # the UI filters deployments and runs by tag: a site's and a service's at a click
            "tags": [*(d.get("tags") or []), f"site:{site.site}", f"service:{site.service.name}"],
            "description": d.get("description"),
            "concurrency_limit": d.get("concurrency_limit"),
            "entrypoint_type": EntrypointType.MODULE_PATH,
            "triggers": site_triggers(d["name"], d.get("triggers") or [], site),
        }
        if d.get("interval"):
            settings["interval"] = float(d["interval"])
        if d.get("schedule_from") == "maintenance-windows":
            schedules = window_schedules(d["name"], site)
            if schedules:
                settings["schedules"] = schedules
        out.append((fl, settings))
    return out


def build_deployments(site_file: str, path: Path = DEPLOYMENTS_FILE) -> list[Any]:
    """RunnerDeployments for every entry (see `deployment_specs`)."""
    return [fl.to_deployment(**settings) for fl, settings in deployment_specs(site_file, path)]


def sites_specs(
    site_files: str | Sequence[str], path: Path = DEPLOYMENTS_FILE
) -> list[tuple[Any, dict[str, Any]]]:
    """`deployment_specs` of several sites at once (one `handover serve` or worker for them all).

    Raises:
        DeploymentsError: two of the files are the same site and service (`distinct_sites`).
    """
    files = [site_files] if isinstance(site_files, str) else list(site_files)
    distinct_sites(files)
    return [spec for f in files for spec in deployment_specs(f, path)]


def distinct_sites(site_files: Sequence[str]) -> list[Site]:
    """The sites of the files, each site and service once.

    Raises:
        DeploymentsError: two of the files are the same site and service (their deployments
            would be one another's), naming both.
        config.loader.SiteConfigError: a file is not a valid site file.
    """
    from config.loader import load_site

    seen: dict[tuple[str, str], str] = {}
    out = []
    for f in site_files:
        site = load_site(f)
        key = (site.site, site.service.name)
        if key in seen:
            raise DeploymentsError(
                f"{f} and {seen[key]} are both site {key[0]}, service {key[1]}: their deployments "
                "would be the same ones; give each site and service once"
            )
        seen[key] = f
        out.append(site)
    return out


def ensure_work_pool(name: str) -> bool:
    """Create the work pool (type `process`, what `handover worker` serves) unless it exists;
    returns whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return False  # another deploy made it meanwhile
        return True


def retire_plain_deployments(site_file: str, path: Path = DEPLOYMENTS_FILE) -> list[str]:
    """Delete this site's deployments of the naming before `deployment_name` (an entry's plain
    name, ``clean-move``, whose `site_file` is this site's), and their automations: left in
    place, their triggers would still create runs that nothing serves.

    Returns:
        One line per deployment deleted.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.exceptions import ObjectNotFound

    entries = [d["name"] for d in read_deployments(path)]
    mine = str(Path(site_file).resolve())
    lines = []
    with get_client(sync_client=True) as client:
        ours = FlowFilter(name=FlowFilterName(any_=entries))
        flows = {f.id: f.name for f in client.read_flows(flow_filter=ours)}
        for dep in client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=entries))
        ):
            if flows.get(dep.flow_id) != dep.name or dep.parameters.get("site_file") != mine:
                continue  # not handover's, or another site's (that site retires it)
            client.delete_resource_owned_automations(f"prefect.deployment.{dep.id}")
            try:
                client.delete_deployment(dep.id)
            except ObjectNotFound:
                continue  # another deploy retired it meanwhile
            lines.append(f"{dep.name}/{dep.name} {dep.id} deleted: named as before per site")
    return lines


def deploy_all(site_file: str, pool: str | None = None, path: Path = DEPLOYMENTS_FILE) -> list[str]:
    """Register every deployment and its automations with the configured Prefect API
    (idempotent: a deployment is updated in place, its automations replaced), each in its work
    pool (`work_pool.name` in prefect.yaml, or `pool` for all), which is created if missing.

    Returns:
        One line per pool created and per deployment: its name, id, pool and triggers.
    """
    from infra.crash_recovery import ensure_automations

    entries = {d["name"]: d for d in read_deployments(path)}
    lines = ensure_automations() + retire_plain_deployments(site_file, path)
    created: set[str] = set()
    for dep in build_deployments(site_file, path):
        pool_name = pool or (entries[deployment_entry(dep.name)].get("work_pool") or {}).get("name")
        if pool_name and pool_name not in created:
            if ensure_work_pool(pool_name):
                lines.append(f"work pool {pool_name} created (type process)")
            created.add(pool_name)
        dep_id = dep.apply(work_pool_name=pool_name)
        lines.append(
            f"{dep.flow_name}/{dep.name} {dep_id} "
            f"(pool {pool_name or 'none: served'}, {len(dep.triggers)} trigger(s))"
        )
    return lines


StartMethod = Literal["forkserver", "spawn"]


def start_runs_from_forkserver(modules: list[str]) -> Any:
    """Make this process start Prefect flow runs from a fork server that has imported `modules`.

    Prefect's `run_flow_in_subprocess` asks `multiprocessing.get_context("spawn")` for its
    context; this answers the `forkserver` context instead, for `prefect.flow_engine` only
    (`flows.prefect_private.start_flow_runs_with`; tests/test_serve.py checks the served runs'
    start method). The fork server is started here, before the runner's threads exist, so that
    what it forks is a single-threaded process.

    Returns:
        The fork server context.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([FLOW_ENGINE, "flows.prefect_private", *modules])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    start_flow_runs_with(ctx)
    return ctx


def allow_site_dir(site_file: str) -> None:
    """Let the runs this process starts load site files from the directory of `site_file` (the
    operator chose it): `HANDOVER_SITES_DIRS`, which the runs inherit."""
    here = str(Path(site_file).resolve().parent)
    dirs = [d for d in os.environ.get("HANDOVER_SITES_DIRS", "").split(os.pathsep) if d]
    if here not in dirs:
        os.environ["HANDOVER_SITES_DIRS"] = os.pathsep.join([*dirs, here])


def serve_all(
    site_files: str | Sequence[str],
    *,
    poll_s: float = 0.5,
    limit: int | None = None,
    start: StartMethod = "forkserver",
    path: Path = DEPLOYMENTS_FILE,
) -> None:
    """Serve every deployment of every site until interrupted; poll for scheduled runs every
    `poll_s` seconds.

    Args:
        site_files: the sites the deployments run for (a file, or several: each site's
            deployments are its own, `deployment_name`).
        path: the deployments file (deployments/prefect.yaml).
        poll_s: seconds between checks for runs to start.
        limit: at most this many runs at once.
        start: how a run's process starts: `forkserver` (imports done once, see the module
            docstring) or `spawn` (Prefect's own way).
    """
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", str(max(1, int(poll_s))))
    files = [site_files] if isinstance(site_files, str) else list(site_files)
    for f in files:
        allow_site_dir(f)
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    specs = sites_specs(files, path)
    pickle_flows_by_reference()
    never_signal_ended_processes()
    if start == "forkserver":
        start_runs_from_forkserver(sorted({fl.fn.__module__ for fl, _ in specs}))
    from infra.crash_recovery import HEARTBEAT_S, ensure_automations

    ensure_automations()
    for f in files:
        for line in retire_plain_deployments(f, path):
            print(f"handover serve: {line}", flush=True)
    # heartbeats, so that a run whose process dies is known crashed and started again
    runner = Runner(
        pause_on_shutdown=False, limit=limit, query_seconds=poll_s, heartbeat_seconds=HEARTBEAT_S
    )
    # add_flow, not add_deployment: the runner then starts a run by handing the flow object to a
    # child process (run_flow_in_subprocess), not with `python -m prefect.engine`, which would
    # import Prefect and the flow's module afresh in every run
    for fl, settings in specs:
        runner.add_flow(fl, **settings)
    names = ", ".join(str(settings["name"]) for _, settings in specs)
    print(f"handover serve: {names}; polling every {poll_s:g} s; runs start by {start}", flush=True)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        print("handover serve: stopped", flush=True)


def _module_of(entrypoint: str) -> str:
    return entrypoint.rsplit(":", 1)[0].removesuffix(".py").replace("/", ".")
