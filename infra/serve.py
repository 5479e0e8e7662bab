"""`handover serve`: serve every deployment of deployments/prefect.yaml from one process."""

from __future__ import annotations

import os
import re
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

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


def build_deployments(site_file: str, path: Path = DEPLOYMENTS_FILE) -> list[Any]:
    """RunnerDeployments for every entry, with `site_file` as the default site."""
    from prefect.types.entrypoint import EntrypointType

    out = []
    for d in read_deployments(path):
        fl = load_flow(d["entrypoint"])
        params = {**(d.get("parameters") or {}), "site_file": str(Path(site_file).resolve())}
        out.append(
            fl.to_deployment(
                name=d["name"],
                parameters=params,
                tags=d.get("tags") or [],
                description=d.get("description"),
                concurrency_limit=d.get("concurrency_limit"),
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def serve_all(site_file: str, *, poll_s: float = 1.0, limit: int | None = None) -> None:
    """Serve every deployment until interrupted; poll for scheduled runs every `poll_s` seconds."""
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", str(max(1, int(poll_s))))
    from prefect import serve

    serve(*build_deployments(site_file), pause_on_shutdown=False, limit=limit, query_seconds=poll_s)
