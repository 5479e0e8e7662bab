"""`lab up` / `lab down` through the CLI: up shows every host, down leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.lab.host import processes_by_namespace
from tests.conftest import LAB_DB_PORT_BASE, make_test_site, require_lab

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def _nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    require_lab()
    return make_test_site(tmp_path, "labcycle", 9, LAB_DB_PORT_BASE + 9)


@pytest.mark.lab
def test_up_status_down_leaves_nothing(site_file: Path) -> None:
    up = _cli("lab", "up", "--site", str(site_file), "--json")
    try:
        assert up.returncode == 0, up.stderr
        report = json.loads(up.stdout)
        assert report["hosts"] == ["fts101", "fts102", "fts105", "fts106"]
        st = json.loads(_cli("lab", "status", "--site", str(site_file), "--json").stdout)
        assert st["up"] and st["labd"]
        assert {h["name"] for h in st["hosts"]} == set(report["hosts"])
        assert all(h["up"] and h["sshd"] for h in st["hosts"])
        assert sum(len(h["agents"]) for h in st["hosts"]) == 8
        assert len(st["channels"]) == 6
        # BIND9's primary and secondary answer the alias, at the first host
        assert [d["role"] for d in st["dns"]] == ["primary", "secondary"]
        first = st["hosts"][0]["address"]
        assert all(d["addresses"] == [first] and d["epoch"] == 1 for d in st["dns"]), st["dns"]
        # the database's own faults: frozen, healed; shown by status while they last
        frozen = _cli("lab", "db-fault", "frozen", "--site", str(site_file))
        assert frozen.returncode == 0, frozen.stderr
        st_frozen = json.loads(_cli("lab", "status", "--site", str(site_file), "--json").stdout)
        assert st_frozen["database_fault"] == "frozen"
        healed = _cli("lab", "db-heal", "--site", str(site_file))
        assert healed.returncode == 0 and "resumed" in healed.stdout, healed.stderr
        again = _cli("lab", "up", "--site", str(site_file))
        assert again.returncode != 0 and "already up" in again.stderr
        rec = json.loads((Path(st["site_file"]).parent / "lab.json").read_text())
        nss = {int(h["ns"]) for h in rec["hosts"].values()}
        pids = [rec["labd_pid"], rec["pg_pid"]] + [h["unshare_pid"] for h in rec["hosts"].values()]
        pids += list(rec["dns_pids"].values())
        fault = _cli("lab", "fault", "fts101", "crash", "--site", str(site_file))
        assert fault.returncode == 0, fault.stderr
        assert "handover_lab_labcycle" in _nft_tables()
    finally:
        down = _cli("lab", "down", "--site", str(site_file), "--json", "--purge")
    assert down.returncode == 0, down.stderr
    report = json.loads(down.stdout)
    assert report["leftovers"] == []
    assert not Path(report["purged"]).exists(), "lab down --purge left its state directory"
    # a namespace's inode is reused once it is gone: one that another lab created since (a
    # test module beside this one) has that lab's init, not this lab's, and is not ours
    state = str(Path(st["site_file"]).parent)
    left = {
        ns: procs
        for ns, procs in processes_by_namespace(nss).items()
        if not any(p.nspid == 1 and state not in p.title for p in procs)
    }
    assert all(not procs for procs in left.values()), left
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"process {pid} still runs"
    assert "handover_lab_labcycle" not in _nft_tables()
    st = json.loads(_cli("lab", "status", "--site", str(site_file), "--json").stdout)
    assert not st["up"]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_lab_refuses_a_site_without_lab_section(tmp_path: Path) -> None:
    res = _cli("lab", "status", "--site", str(ROOT / "config" / "sites" / "cern-fts.yaml"))
    assert res.returncode == 1 and "no `lab:` section" in res.stderr


def test_missing_prerequisites_are_named() -> None:
    from infra.lab.lab import missing_prerequisites

    if os.geteuid() != 0:
        assert any("root" in m for m in missing_prerequisites())
    else:
        assert missing_prerequisites() == []
