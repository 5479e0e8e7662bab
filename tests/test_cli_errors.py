"""The command line prints its errors exactly as they read: a pattern's ``[a-z]``, a path's
``[x]`` or ``[/tmp/x]`` are never taken for rich markup (eaten, or a MarkupError instead of the
error); and a command stopped with SIGTERM ends through its clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config.site import HOST_NAME_RE

ROOT = Path(__file__).resolve().parent.parent
LAB_SITE = ROOT / "config" / "sites" / "lab.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        # wide enough that rich does not fold a line inside a pattern or a path
        env={**os.environ, "COLUMNS": "400"},
    )


def _refused(res: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in res.stderr and "MarkupError" not in res.stderr, res.stderr
    assert res.returncode == code, res.stderr
    return res.stderr


def test_an_invalid_site_file_prints_its_pattern_and_path_as_they_are(tmp_path: Path) -> None:
    """The top-level handler: a site file refused by a command that loads it."""
    site = yaml.safe_load(LAB_SITE.read_text())
    site["site"] = "lab; rm -rf /"
    where = tmp_path / "[x]"
    where.mkdir()
    bad = where / "bad.yaml"
    bad.write_text(yaml.safe_dump(site))
    said = _refused(_cli("snapshot", "--site", str(bad)), 2)
    assert f"invalid site file {bad}:" in said
    # rich took "[a-z]" and "[a-z0-9-]" for tags: the pattern printed as '^{0,62}$'
    assert f"String should match pattern '{HOST_NAME_RE}'" in said


def test_a_path_in_brackets_is_printed_as_it_is() -> None:
    said = _refused(_cli("snapshot", "--site", "[/tmp/x]"), 2)
    assert "invalid site file [/tmp/x]:" in said


def test_command_groups_print_what_they_were_given_as_it_is() -> None:
    """`handover service` names a host the site does not have; `handover hagd run` a
    configuration file it cannot read."""
    said = _refused(_cli("service", "status", "--site", str(LAB_SITE), "--host", "[/tmp/x]"), 2)
    assert "[/tmp/x]: not a host of lab (hosts: fts101" in said
    said = _refused(_cli("hagd", "run", "--config", "[/tmp/x][bold]"), 2)
    assert "[/tmp/x][bold]" in said


def test_check_remap_refuses_what_it_cannot_check_and_says_the_fix(tmp_path: Path) -> None:
    """`handover check remap`: a site without `geo:`, a tool the site does not have (printed
    as given) and a CA file that cannot be read are refusals (2), each naming its fix."""
    said = _refused(_cli("check", "remap", "--service", "portal", "--site", str(LAB_SITE)), 2)
    assert "cannot check remap: site lab has no geo section" in said
    assert "config/sites/geo-lab.yaml" in said
    geo_lab = ROOT / "config" / "sites" / "geo-lab.yaml"
    said = _refused(_cli("check", "remap", "--service", "[x]", "--site", str(geo_lab)), 2)
    assert "no tool '[x]' in geo.tools; tools: portal; name one of them (--service)" in said
    site = yaml.safe_load(geo_lab.read_text())
    site["geo"]["tools"][0]["ca_file"] = str(tmp_path / "[no]" / "ca.pem")
    (tmp_path / "geo.yaml").write_text(yaml.safe_dump(site))
    said = _refused(
        _cli("check", "remap", "--service", "portal", "--site", str(tmp_path / "geo.yaml")), 2
    )
    assert f"geo.tools[portal].ca_file: {tmp_path}/[no]/ca.pem cannot be used as a CA file" in said


SIGTERMED = """
import sys, time
from pathlib import Path
from prefect import flow
from infra.cli.common import exit_on_sigterm

out = Path(sys.argv[1])
exit_on_sigterm()


@flow(name="sigterm-under-a-flow")
def held() -> None:
    (out / "running").touch()
    time.sleep(120)


try:
    held()
finally:
    (out / "cleaned-up").touch()
"""


@pytest.mark.server
def test_a_command_stopped_with_sigterm_under_a_flow_runs_its_clean_up(
    prefect_api: str, tmp_path: Path
) -> None:
    """What a bench or a rehearsal does with its lab: a SIGTERM while a Prefect flow runs ends
    the command through its ``finally`` (exit 143). Without `exit_on_sigterm`, Prefect marks the
    run Crashed and hands the signal back to Python's default handler, which ends the process
    on the spot: the lab stayed up."""
    import signal

    from tests.conftest import wait_for

    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERMED, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: (tmp_path / "running").exists() or proc.poll() is not None,
            60,
            "the flow to start",
        )
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "cleaned-up").exists(), out
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out)
