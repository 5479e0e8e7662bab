"""The tool's processes as the lab runs them: one per tool and site, each from a JSON
configuration the lab writes (`infra.lab.geo.tool.ToolConfig`)."""

from __future__ import annotations

import sys
from pathlib import Path

from config.site import Geo, Tool
from infra.lab.errors import LabError
from infra.lab.geo import observe, procs
from infra.lab.geo import secrets as labsecrets
from infra.lab.geo.paths import GeoPaths
from infra.lab.geo.procs import ProcRef
from infra.lab.geo.tool import ToolConfig

#: how long a tool is given to serve once started
START_TIMEOUT_S = 30.0
#: the project's root: where ``python -m infra.lab.geo.tool`` finds its package
ROOT = Path(__file__).resolve().parents[3]


def config_file(paths: GeoPaths, tool: Tool, site: str) -> Path:
    """Where the configuration of `tool` at `site` is written."""
    return paths.tool_dir(tool.name, site) / "tool.json"


def write_config(geo: Geo, paths: GeoPaths, tool: Tool, site: str, cert: tuple[Path, Path]) -> Path:
    """Write the configuration of `tool` at `site`: its placement, its certificate, its own
    database account, every master of every site, and the planted traps (a link to the first
    site's old console, a redirect to the first site's host).

    Returns:
        The file written.
    """
    placement = tool.sites[site]
    first_site = next(iter(tool.sites))
    cfg = ToolConfig(
        tool=tool.name,
        site=site,
        names=[n.rstrip(".") for n in tool.names],
        host_name=labsecrets.host_name(geo, tool, site),
        address=placement.address,
        port=tool.port,
        cert=cert[0],
        key=cert[1],
        db_host=placement.db_host,
        db_port=placement.db_port or tool.database.port,
        db_user=labsecrets.APP_USER,
        db_password_file=paths.app_password,
        database=tool.database.database,
        masters=[m for _, m in geo.masters()],
        legacy_host=labsecrets.host_name(geo, tool, first_site),
        old_link=f"https://cic-old.{first_site}.{labsecrets.HOST_DOMAIN}/manage",
    )
    path = config_file(paths, tool, site)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.model_dump_json(indent=2))
    return path


def start(paths: GeoPaths, tool: Tool, site: str) -> ProcRef:
    """Start `tool` at `site` from its configuration.

    Returns:
        The process, once its health page answers over HTTPS (any status: a replica's says
        503, read-only).

    Raises:
        LabError: it exited or did not answer in time (with its log's tail).
    """
    log = paths.tool_dir(tool.name, site) / "tool.log"
    argv = [
        sys.executable,
        "-m",
        "infra.lab.geo.tool",
        "--config",
        str(config_file(paths, tool, site)),
    ]
    ref = procs.spawn(argv, log, f"{tool.name} at {site}", cwd=ROOT)
    ca = labsecrets.ca_file(tool, paths)
    address = tool.sites[site].address
    try:
        procs.wait_until(
            lambda: observe.health(address, tool.port, ca, 1.0)[0] is not None,
            START_TIMEOUT_S,
            f"{tool.name} at {site} did not serve https://{address}:{tool.port}/health",
            proc=ref,
            logs=[log],
        )
    except LabError:
        procs.kill([ref])
        raise
    return ref
