"""How `make test` splits the modules into groups (`tests/groups.py`) and how the suite's tiers
are given (`tests/conftest.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.groups import load_durations, merge, split


def test_the_longest_modules_are_spread_and_every_module_placed_once() -> None:
    durations = {"a.py": 600, "b.py": 500, "c.py": 400, "d.py": 300, "e.py": 100, "f.py": 90}
    counts = {m: 3 for m in durations}
    groups = split(counts, durations, 3)
    # longest first, each to the least loaded group: a, b, c one each; d joins c (400), e joins
    # b (500), f joins a (600, the first of the two equal loads)
    assert groups == [["a.py", "f.py"], ["b.py", "e.py"], ["c.py", "d.py"]]
    assert sorted(m for g in groups for m in g) == sorted(durations)


def test_modules_that_share_the_cluster_stay_in_one_group() -> None:
    durations = {"switch.py": 500, "ocf.py": 400, "alerts.py": 300, "lab.py": 450, "plan.py": 10}
    counts = {m: 1 for m in durations}
    groups = split(counts, durations, 3, together={"switch.py", "ocf.py", "alerts.py"})
    [home] = [g for g in groups if "switch.py" in g]
    assert {"ocf.py", "alerts.py"} <= set(home)
    assert sorted(m for g in groups for m in g) == sorted(durations)


def test_an_untimed_module_is_guessed_from_its_test_count() -> None:
    # x.py was never timed: 100 tests at 2 s each outweigh y.py's recorded 150 s
    groups = split({"x.py": 100, "y.py": 1, "z.py": 1}, {"y.py": 150, "z.py": 140}, 2)
    assert groups[0] == ["x.py"] and sorted(groups[1]) == ["y.py", "z.py"]


def test_the_split_is_the_same_in_every_process() -> None:
    durations = load_durations()
    counts = {m: 1 for m in durations}
    assert split(counts, durations, 3) == split(dict(reversed(counts.items())), durations, 3)


def test_no_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one group"):
        split({"a.py": 1}, {}, 0)


def test_measured_durations_are_merged_over_the_recorded_ones(tmp_path: Path) -> None:
    recorded = tmp_path / "durations.json"
    recorded.write_text(json.dumps({"a.py": 10.0, "b.py": 20.0}))
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"b.py": 25.04, "c.py": 5}))
    merge([run], recorded)
    assert json.loads(recorded.read_text()) == {"a.py": 10.0, "b.py": 25.0, "c.py": 5.0}
    run.write_text('["not", "a", "mapping"]')
    with pytest.raises(ValueError, match="module file names to seconds"):
        merge([run], recorded)


def test_every_recorded_module_exists() -> None:
    """A renamed module left in the file would be split as if it still ran."""
    gone = [m for m in load_durations() if not (ROOT / "tests" / m).exists()]
    assert gone == []


def _run_pytest(
    tmp_path: Path, body: str, *args: str, root: bool = True
) -> subprocess.CompletedProcess[str]:
    """pytest on one test module `body` with the suite's configuration and conftest, outside
    CI; `root=False` runs it as if its user were not root (a plugin loaded first says so)."""
    module = tmp_path / "test_probe.py"
    module.write_text(textwrap.dedent(body))
    (tmp_path / "as_user.py").write_text("import os\n\nos.geteuid = lambda: 1000\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if not root:
        command += ["-p", "as_user"]
    command += ["-p", "tests.conftest", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(tmp_path), str(module), *args]
    # outside CI, and not one of `make test`'s groups (the probe module would be split off)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "HANDOVER_TEST_GROUP", "HANDOVER_TEST_GROUPS")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_unit_test_that_needs_root_fails_naming_its_mark(tmp_path: Path) -> None:
    res = _run_pytest(
        tmp_path,
        """
        from tests.conftest import require

        def test_looks_like_a_unit_test() -> None:
            require(True, "root", need="lab")
        """,
    )
    assert res.returncode == 1, res.stdout
    assert "needs root but is not marked lab" in res.stdout, res.stdout


def test_make_check_selects_no_test_that_needs_a_server_or_the_lab(tmp_path: Path) -> None:
    res = _run_pytest(
        tmp_path,
        """
        import pytest

        def test_plain() -> None:
            pass

        def test_with_the_server(prefect_api: str) -> None:
            pass

        @pytest.mark.pacemaker
        def test_with_the_cluster() -> None:
            pass
        """,
        "-m",
        "unit",
        "--collect-only",
    )
    assert res.returncode == 0, res.stdout
    assert "test_plain" in res.stdout
    assert "test_with_the_server" not in res.stdout and "test_with_the_cluster" not in res.stdout


def test_without_root_the_run_fails_saying_how_many_tests_need_it(tmp_path: Path) -> None:
    body = """
        import pytest

        def test_plain() -> None:
            pass

        @pytest.mark.lab
        def test_on_the_lab() -> None:
            pass

        def test_with_a_lab(lab: object) -> None:
            pass
        """
    res = _run_pytest(tmp_path, body, root=False)
    assert res.returncode == 1, res.stdout
    assert "1 passed, 2 deselected" in res.stdout, res.stdout
    [line] = [x for x in res.stdout.splitlines() if "need root" in x]
    assert line == (
        "2 tests need root and were not run: run `sudo make test` "
        "(it installs the lab's Debian packages)"
    )
    # as root, nothing is left out
    res = _run_pytest(tmp_path, body, "--collect-only")
    assert res.returncode == 0 and "need root" not in res.stdout, res.stdout
    # `make check` without root: nothing it selected needs root, so it passes
    res = _run_pytest(tmp_path, body, "-m", "unit", root=False)
    assert res.returncode == 0 and "need root" not in res.stdout, res.stdout
    assert "1 passed, 2 deselected" in res.stdout, res.stdout
