"""The agents' software and configuration on a lab host, and the commands that change them.

The rolling upgrade, as the lab plays it:

* **The repository** (``<state>/repo/glite-data-transfer-agents/<VERSION>/``): real files per
  version: ``release.json`` (name, version, release, and ``broken`` with the error a broken
  version's agents fail with, everywhere or on some hosts) and the agents' configuration
  templates. `handover lab up` writes versions 1 to 5; 3 is broken (its agents fail at start),
  for rehearsing failures; `mark_broken` breaks another on chosen hosts.
* **The installed software** (``/opt/glite/lib/transfer-agents`` in each host, on the host's own
  ``/opt`` overlay): a copy of one version's directory. ``spma_wrapper.sh --version V`` installs a
  version from the repository (the copy is renamed into place: a host never has half a version);
  ``rpm -q glite-data-transfer-agents`` says what is installed.
* **The configuration** (``/etc/glite-data-transfer-agents.d/NAME.conf``): rendered by
  ``/opt/glite/yaim/scripts/configure_node SITE-INFO FTA`` from the installed version's templates
  and the site-info file (shell ``KEY=VALUE`` lines; the lab's lives in ``<state>/yaim``, shared by
  every host as a site's file on AFS is). It prints what changed in each file, as YAIM does.

An agent reads its version and configuration when it starts (`agent_release`), records them in
its state file, and stamps each transfer it starts with its version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

PACKAGE = "glite-data-transfer-agents"
#: where the installed software lives inside a host
INSTALLED_DIR = Path("/opt/glite/lib/transfer-agents")
#: where configure_node writes each agent's configuration inside a host
CONF_DIR = Path("/etc/glite-data-transfer-agents.d")
CONFIGURE_NODE = Path("/opt/glite/yaim/scripts/configure_node")

#: the versions `handover lab up` puts in the repository, and the broken one's error
VERSIONS: dict[str, str | None] = {
    "1": None,
    "2": None,
    "3": "glite-transfer-agent: symbol lookup error: libgridsite.so.1: undefined symbol "
    "gridsite_url_encode (version 3 is broken in the lab's repository)",
    "4": None,
    "5": None,
}

#: the lab's site-info file at `lab up` (the variables the templates use)
DEFAULT_SITE_INFO = """\
# YAIM site-info for the lab's FTA agents. configure_node re-renders each agent's
# configuration from it: edit a value, run `configure_node THIS-FILE FTA`, restart the agents.
FTA_LOG_LEVEL=INFO
FTA_TRANSFER_TIMEOUT=3600
FTA_MAX_RETRIES=3
FTA_URLCOPY_STREAMS=5
"""

TEMPLATES = {
    "channel": (
        "# {name}: channel agent configuration, rendered by configure_node (YAIM).\n"
        "# glite-data-transfer-agents {version}; do not edit: edit the site-info file.\n"
        "AGENT_NAME={name}\n"
        "CHANNEL={channel}\n"
        "LOG_LEVEL=${FTA_LOG_LEVEL}\n"
        "TRANSFER_TIMEOUT=${FTA_TRANSFER_TIMEOUT}\n"
        "MAX_RETRIES=${FTA_MAX_RETRIES}\n"
        "URLCOPY_STREAMS=${FTA_URLCOPY_STREAMS}\n"
    ),
    "vo": (
        "# {name}: VO agent configuration, rendered by configure_node (YAIM).\n"
        "# glite-data-transfer-agents {version}; do not edit: edit the site-info file.\n"
        "AGENT_NAME={name}\n"
        "VO={vo}\n"
        "LOG_LEVEL=${FTA_LOG_LEVEL}\n"
        "MAX_RETRIES=${FTA_MAX_RETRIES}\n"
    ),
}


class Release(TypedDict):
    """A version's ``release.json``: ``broken`` is the error its agents fail with, on every
    host or only on the hosts in ``broken_on`` (a release that breaks on some boxes only)."""

    name: str
    version: str
    release: str
    broken: str | None
    broken_on: list[str] | None


class AgentSpec(TypedDict):
    """What configure_node needs of an agent (a subset of the host's runtime entry)."""

    name: str
    channel: str | None
    vo: str | None


# --- the repository (written by `lab up`) -------------------------------------------------------


def write_repository(repo: Path, extra: Sequence[str] = ()) -> None:
    """Write the lab's package repository: one directory of real files per version (its own,
    and the `extra` ones, sound)."""
    for version, broken in {**VERSIONS, **dict.fromkeys(extra)}.items():
        d = repo / PACKAGE / version
        (d / "templates").mkdir(parents=True, exist_ok=True)
        release: Release = {
            "name": PACKAGE,
            "version": version,
            "release": "1",
            "broken": broken,
            "broken_on": None,
        }
        (d / "release.json").write_text(json.dumps(release, indent=2) + "\n")
        for kind, text in TEMPLATES.items():
            (d / "templates" / f"{kind}.conf.in").write_text(text.replace("{version}", version))


def mark_broken(repo: Path, version: str, reason: str | None, hosts: list[str] | None) -> None:
    """Mark a version of the repository broken (on `hosts` only, or everywhere), or sound again
    (`reason` None). Hosts that install it afterwards get the mark; installed copies keep theirs."""
    f = repo / PACKAGE / version / "release.json"
    rel: Release = json.loads(f.read_text())
    rel["broken"] = reason
    rel["broken_on"] = hosts if reason else None
    f.write_text(json.dumps(rel, indent=2) + "\n")


def install_into(repo: Path, version: str, target: Path) -> None:
    """Copy one version of the repository to `target` (renamed into place)."""
    src = repo / PACKAGE / version
    if not (src / "release.json").is_file():
        have = ", ".join(available(repo)) or "none"
        raise LookupError(f"no package {PACKAGE} version {version} in {repo} (have {have})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def available(repo: Path) -> list[str]:
    """The versions in the repository, in order."""
    d = repo / PACKAGE
    if not d.is_dir():
        return []
    return sorted((p.name for p in d.iterdir() if (p / "release.json").is_file()), key=_vkey)


def _vkey(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (1 << 30, v)


# --- what is installed and configured ---------------------------------------------------------


def installed(root: Path = Path("/")) -> Release | None:
    """The installed release (None: nothing installed), read inside a host or through
    ``/proc/PID/root``."""
    try:
        data: Release = json.loads(
            (root / str(INSTALLED_DIR).lstrip("/") / "release.json").read_text()
        )
    except (OSError, ValueError):
        return None
    return data


def conf_file(agent: str, root: Path = Path("/")) -> Path:
    """An agent's configuration file."""
    return root / str(CONF_DIR).lstrip("/") / f"{agent}.conf"


def digest(text: str) -> str:
    """A configuration's short digest (what `lab status` and the agents' status show)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def agent_release(agent: str, host: str = "") -> tuple[str, str]:
    """The version and configuration digest an agent starts with, inside a host.

    Raises:
        RuntimeError: nothing is installed, the installed version is broken, or the agent has no
            configuration (the message is the agent's failure reason).
    """
    rel = installed()
    if rel is None:
        raise RuntimeError(f"{PACKAGE} is not installed ({INSTALLED_DIR} has no release.json)")
    if rel.get("broken") and (not rel.get("broken_on") or host in (rel.get("broken_on") or [])):
        raise RuntimeError(str(rel["broken"]))
    try:
        text = conf_file(agent).read_text()
    except OSError as exc:
        raise RuntimeError(
            f"no configuration ({exc.strerror}: {conf_file(agent)}); run configure_node"
        ) from None
    return rel["version"], digest(text)


# --- site-info and rendering --------------------------------------------------------------------

_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_site_info(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of a site-info file (comments and blank lines skipped, one level of
    quotes removed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ASSIGN.match(line)
        if not m:
            raise ValueError(f"not a KEY=VALUE line: {line.strip()!r}")
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``${VAR}`` from the site-info values.

    Raises:
        KeyError: a variable the template needs is not in the site-info file.
    """

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(m.group(1))
        return values[m.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", fill, template)


def changes(old: str, new: str) -> list[str]:
    """What changed between two renderings, as ``KEY old -> new`` (YAIM's report)."""

    def pairs(text: str) -> dict[str, str]:
        return dict(
            line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
        )

    a, b = pairs(old), pairs(new)
    out = []
    for k in sorted(a.keys() | b.keys()):
        if a.get(k) != b.get(k):
            out.append(f"{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}")
    if not out and old != new:
        out.append("header updated")
    return out


def configure(
    site_info: Path, agents: list[AgentSpec], software: Path, conf_dir: Path
) -> list[tuple[str, list[str]]]:
    """Render each agent's configuration from the installed templates; return what changed per
    file (files that did not change are not listed).

    Raises:
        ValueError: the site-info file is malformed or lacks a variable (the message names it).
        OSError: a file could not be read or written.
    """
    values = parse_site_info(site_info.read_text())
    conf_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, list[str]]] = []
    for a in agents:
        kind = "channel" if a["channel"] else "vo"
        template = (software / "templates" / f"{kind}.conf.in").read_text()
        try:
            text = render(
                template.replace("{name}", a["name"])
                .replace("{channel}", a["channel"] or "")
                .replace("{vo}", a["vo"] or ""),
                values,
            )
        except KeyError as exc:
            raise ValueError(
                f"{site_info}: {exc.args[0]} is not set (the {kind} agents' template needs it)"
            ) from None
        target = conf_dir / f"{a['name']}.conf"
        try:
            old = target.read_text()
        except FileNotFoundError:
            old = ""
        if old == text:
            continue
        tmp = target.with_suffix(".conf.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        out.append((str(target), changes(old, text) if old else ["created"]))
    return out


# --- the host commands --------------------------------------------------------------------------


def spma_wrapper(argv: list[str]) -> int:
    """``spma_wrapper.sh --version V``: install a version of the agents' software (the lab's
    stand-in for SPMA, which installs what the node's profile says)."""
    from infra.lab.runtime import load_runtime

    ap = argparse.ArgumentParser(prog="spma_wrapper.sh")
    ap.add_argument("--version", required=True, help="the version to install")
    args = ap.parse_args(argv)
    repo = Path(load_runtime()["repo_dir"])
    before = installed()
    if before is not None and before["version"] == args.version:
        print(f"[INFO] {PACKAGE}-{args.version}-{before['release']} is installed; nothing to do")
        return 0
    try:
        install_into(repo, args.version, INSTALLED_DIR)
    except LookupError as exc:
        print(f"[ERROR] {exc}", file=sys.stderr)
        return 1
    after = installed()
    assert after is not None
    was = f"{before['version']}-{before['release']}" if before else "(none)"
    print(f"[INFO] {PACKAGE}: {was} -> {after['version']}-{after['release']}")
    print("[INFO] SPMA finished: 1 package upgraded")
    return 0


def rpm(argv: list[str]) -> int:
    """``rpm -q glite-data-transfer-agents``: the installed package, as rpm names it."""
    if len(argv) != 2 or argv[0] != "-q":
        print("rpm (lab): only `rpm -q PACKAGE` is supported", file=sys.stderr)
        return 2
    rel = installed()
    if argv[1] != PACKAGE or rel is None:
        print(f"package {argv[1]} is not installed")
        return 1
    print(f"{PACKAGE}-{rel['version']}-{rel['release']}.noarch")
    return 0


def configure_node(argv: list[str]) -> int:
    """``configure_node SITE-INFO FTA``: re-render the agents' configuration and report it."""
    from infra.lab.runtime import load_runtime

    ap = argparse.ArgumentParser(prog="configure_node")
    ap.add_argument("site_info")
    ap.add_argument("node_type")
    args = ap.parse_args(argv)
    if args.node_type != "FTA":
        print(f"configure_node: unknown node type {args.node_type} (this node is FTA)")
        return 1
    rt = load_runtime()
    print(f"   Configuring config_fta ({len(rt['agents'])} agents) from {args.site_info}")
    try:
        changed = configure(
            Path(args.site_info),
            [{"name": a["name"], "channel": a["channel"], "vo": a["vo"]} for a in rt["agents"]],
            INSTALLED_DIR,
            CONF_DIR,
        )
    except (OSError, ValueError) as exc:
        print(f"   ERROR: {exc}")
        return 1
    for path, what in changed:
        for line in what:
            print(f"   {path}: {line}")
    print(f"   configure_node: {len(changed)} file(s) changed" if changed else "   no changes")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch: ``python -m infra.lab.software spma|rpm|configure-node ARGS``."""
    from infra.lab.runtime import dispatch

    return dispatch(
        "software",
        {"spma": spma_wrapper, "rpm": rpm, "configure-node": configure_node},
        list(sys.argv[1:] if argv is None else argv),
    )


if __name__ == "__main__":
    sys.exit(main())
