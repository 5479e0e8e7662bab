"""`handover serve`: serve every deployment of deployments/prefect.yaml from one process."""

from __future__ import annotations

import os
import re
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from config.site import Site

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS_FILE = ROOT / "deployments" / "prefect.yaml"


class DeploymentsError(ValueError):
    """deployments/prefect.yaml is malformed; the message names the entry and the field."""


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
        if not re.fullmatch(r"[A-Za-z0-9_/]+\.py:[A-Za-z_][A-Za-z0-9_]*", d["entrypoint"]):
            raise DeploymentsError(
                f"{path}: deployments[{i}].entrypoint must look like flows/file.py:function"
            )
    return entries


def load_flow(entrypoint: str) -> Any:
    """Import the flow object named by `flows/file.py:function` (as a module of this package)."""
    file, func = entrypoint.rsplit(":", 1)
    module = import_module(file.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


def site_triggers(name: str, specs: list[dict[str, Any]], site: Site) -> list[Any]:
    """A deployment's `triggers:` for one site: each matches only that site's events
    (``handover.site``) and its window is the site's `alerts.dedup_window_s`.

    Raises:
        DeploymentsError: a trigger is malformed (the message names it).
    """
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from pydantic import TypeAdapter, ValidationError

    out = []
    for i, spec in enumerate(specs, start=1):
        spec = {**spec, "name": spec.get("name") or f"{name}: {site.site} alert {i}"}
        spec["match"] = {**(spec.get("match") or {}), "handover.site": site.site}
        if site.alerts is not None and spec.get("posture", "Reactive") == "Reactive":
            spec["within"] = site.alerts.dedup_window_s
        try:
            out.append(TypeAdapter(DeploymentEventTrigger).validate_python(spec))
        except ValidationError as exc:
            raise DeploymentsError(f"deployment {name}: triggers[{i - 1}]: {exc}") from None
    return out


def build_deployments(site_file: str, path: Path = DEPLOYMENTS_FILE) -> list[Any]:
    """RunnerDeployments for every entry, with `site_file` as the default site and the entry's
    triggers (automations) bound to that site."""
    from prefect.types.entrypoint import EntrypointType

    from config.loader import load_site

    site = load_site(site_file)
    out = []
    for d in read_deployments(path):
        fl = load_flow(d["entrypoint"])
        params = {**(d.get("parameters") or {}), "site_file": str(Path(site_file).resolve())}
        triggers = site_triggers(d["name"], d.get("triggers") or [], site)
        out.append(
            fl.to_deployment(
                name=d["name"],
                parameters=params,
                tags=d.get("tags") or [],
                description=d.get("description"),
                concurrency_limit=d.get("concurrency_limit"),
                entrypoint_type=EntrypointType.MODULE_PATH,
                triggers=triggers,
            )
        )
    return out


def deploy_all(site_file: str) -> list[str]:
    """Register every deployment and its automations with the configured Prefect API
    (idempotent: a deployment is updated in place, its automations replaced).

    Returns:
        One line per deployment: its name, id and number of triggers.
    """
    lines = []
    for dep in build_deployments(site_file):
        dep_id = dep.apply()
        lines.append(f"{dep.flow_name}/{dep.name} {dep_id} ({len(dep.triggers)} trigger(s))")
    return lines


def serve_all(site_file: str, *, poll_s: float = 1.0, limit: int | None = None) -> None:
    """Serve every deployment until interrupted; poll for scheduled runs every `poll_s` seconds."""
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", str(max(1, int(poll_s))))
    from prefect import serve

    serve(*build_deployments(site_file), pause_on_shutdown=False, limit=limit, query_seconds=poll_s)
