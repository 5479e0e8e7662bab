"""The code's layout: no product module over 600 lines, and the scripts Pacemaker and Heartbeat
run directly import the standard library only.

Product code is every module under config/, flows/, tasks/, infra/ and deployments/, except
the lab (infra/lab/) and the benches (infra/bench/): they are test equipment, not what runs at
a site, and three of their modules are longer today (infra/lab/lab.py, infra/lab/pacemaker.py,
infra/bench/faults.py). The layers themselves are import-linter's contracts (pyproject.toml's
``[tool.importlinter]``, run by ``make lint``); the two scripts below have no ``.py`` suffix, so
import-linter does not see them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.conftest import ROOT

MAX_LINES = 600
PRODUCT = ("config", "flows", "tasks", "infra", "deployments")
TEST_EQUIPMENT = (ROOT / "infra" / "lab", ROOT / "infra" / "bench")
#: run by Pacemaker (the OCF agent) and Heartbeat (the resource script) as they are
SCRIPTS = (ROOT / "infra" / "ocf" / "fts-frontend", ROOT / "infra" / "hooks" / "handover-switch")


def _product_modules() -> list[Path]:
    return [
        f
        for top in PRODUCT
        for f in sorted((ROOT / top).rglob("*.py"))
        if not any(f.is_relative_to(d) for d in TEST_EQUIPMENT)
    ]


def test_no_product_module_is_over_600_lines() -> None:
    modules = _product_modules()
    assert len(modules) > 50
    long = {
        str(f.relative_to(ROOT)): n
        for f in modules
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert not long, (
        f"modules over {MAX_LINES} lines: {long}; split each along what it holds (a package "
        "whose __init__ re-exports the public names keeps its imports working)"
    )


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_scripts_pacemaker_and_heartbeat_run_import_the_standard_library_only() -> None:
    # handover-switch imports its neighbour pacemaker_alert, which import-linter checks
    allowed = set(sys.stdlib_module_names) | {"pacemaker_alert"}
    for script in SCRIPTS:
        imported = _imported(ast.parse(script.read_text(), str(script)))
        foreign = sorted(m for m in imported if m.split(".")[0] not in allowed)
        assert not foreign, f"{script.relative_to(ROOT)} imports {foreign}: standard library only"


#: every procedure's flow, by its module
PROCEDURE_FLOWS = (
    "clean_move",
    "emergency_move",
    "fence_host",
    "drop_db_lock",
    "switch",
    "rolling_upgrade",
)


def test_every_procedure_has_the_one_skeleton_and_holds_the_service_lock() -> None:
    """Each flow builds its result with `Finisher`, opens its run with `procedure_run` and acts
    only inside `locked` (the service lock), with an executor: no flow of its own shape."""
    for name in PROCEDURE_FLOWS:
        tree = ast.parse((ROOT / "flows" / f"{name}.py").read_text())
        called = {
            n.func.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        missing = {"Finisher", "procedure_run", "locked", "Executor"} - called
        assert not missing, f"flows/{name}.py does not call {sorted(missing)}"
        # the lock taken by hand (and its refusal caught by hand) is the skeleton's only
        assert "holding_service" not in called and "service_lock" not in called, name


def test_the_demo_and_the_server_starter_import_no_prefect_before_they_set_its_settings() -> None:
    """`ensure_server` sets the API's URL and auth string in the environment; Prefect reads its
    settings once, when first imported. A module on the demo's way there that imports Prefect
    first leaves every run of the demo on a temporary server of its own, not the local one."""
    import subprocess

    probe = (
        "import sys, infra.demo, infra.prefect_server\n"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]
    from flows.service_lock import LEASE_STORAGE
    from infra.prefect_server import LEASE_STORAGE as SERVER_LEASE_STORAGE

    assert SERVER_LEASE_STORAGE == LEASE_STORAGE


def _private_prefect_names(tree: ast.AST) -> list[str]:
    """The private parts of Prefect a module imports (a name or module part starting with _)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefect"):
            dotted = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            dotted = [a.name for a in node.names if a.name.startswith("prefect")]
        else:
            continue
        found += [d for d in dotted if any(part.startswith("_") for part in d.split("."))]
    return found


def test_prefects_private_names_are_used_in_one_module_only() -> None:
    """Everything outside flows/prefect_private.py (and its test) uses Prefect's public API."""
    allowed = {ROOT / "flows" / "prefect_private.py"}
    used = {
        str(f.relative_to(ROOT)): names
        for f in _product_modules() + sorted((ROOT / "infra").rglob("*.py"))
        if f not in allowed and (names := _private_prefect_names(ast.parse(f.read_text())))
    }
    assert used == {}, f"Prefect's private names outside flows/prefect_private.py: {used}"
    # and the check finds one where it is
    assert _private_prefect_names(ast.parse((ROOT / "flows" / "prefect_private.py").read_text()))
