"""The SSH layer against the lab's hosts, and snapshots checked against `ps` inside each host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import remote
from tasks.adapters.ssh import CommandTimeout, HostKeyError, SshEndpoint, SshPool, SshSettings
from tasks.site_state import parse_processes, snapshot_host, snapshot_site
from tests.conftest import RunningLab


def test_each_lab_host_answers_with_its_own_hostname(lab: RunningLab) -> None:
    pool = lab.shell.pool
    endpoints = [remote.endpoint(lab.site, h.name) for h in lab.site.hosts]
    results = pool.fan_out(endpoints, ["hostname"])
    for h in lab.site.hosts:
        res = results[h.name]
        assert not isinstance(res, Exception), res
        assert res.stdout.strip() == h.name


def test_each_host_has_its_own_process_table_and_etc(lab: RunningLab) -> None:
    pool = lab.shell.pool
    a = pool.run(remote.endpoint(lab.site, "fts101"), ["cat", "/proc/1/cmdline"])
    assert "init.sh" in a.stdout
    f101 = lab.shell.run_argv("fts101", lab.site.commands.disabled_argv("read")).stdout
    f102 = lab.shell.run_argv("fts102", lab.site.commands.disabled_argv("read")).stdout
    assert f101 != f102


def _settings(lab: RunningLab, known_hosts: Path) -> SshSettings:
    return SshSettings(
        user="root",
        key_file=lab.site.ssh.key_file,
        known_hosts=known_hosts,
        connect_timeout=3,
        command_timeout=10,
    )


def test_unknown_host_key_is_refused(lab: RunningLab, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    # fts102's key only: fts101 is unknown
    lines = lab.site.ssh.known_hosts.read_text().splitlines()
    addr102 = lab.site.host("fts102").address
    kh.write_text("".join(line + "\n" for line in lines if addr102 in line))
    before = kh.read_bytes()
    with SshPool(_settings(lab, kh)) as pool, pytest.raises(HostKeyError) as info:
        pool.run(remote.endpoint(lab.site, "fts101"), ["true"])
    assert not info.value.changed
    assert "fts101" in str(info.value) and str(kh) in str(info.value)
    assert kh.read_bytes() == before, "a host key must never be added"


def test_changed_host_key_is_refused(lab: RunningLab, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    h101, h102 = lab.site.host("fts101"), lab.site.host("fts102")
    lines = lab.site.ssh.known_hosts.read_text().splitlines()
    key102 = next(line for line in lines if f"[{h102.address}]" in line).split(" ", 1)[1]
    kh.write_text(f"[{h101.address}]:{h101.port} {key102}\n")
    with SshPool(_settings(lab, kh)) as pool, pytest.raises(HostKeyError) as info:
        pool.run(remote.endpoint(lab.site, "fts101"), ["true"])
    assert info.value.changed and "CHANGED" in str(info.value)


def test_command_past_its_timeout_names_host_and_command(lab: RunningLab) -> None:
    ep = SshEndpoint(
        host="fts105", address=lab.site.host("fts105").address, port=lab.site.host("fts105").port
    )
    pool = lab.shell.pool
    with pytest.raises(CommandTimeout) as info:
        pool.run(ep, ["sleep", "20"], timeout=1)
    assert "fts105" in str(info.value) and "sleep 20" in str(info.value)
    assert pool.run(ep, ["hostname"]).stdout.strip() == "fts105"


def _ps_inside(lab: RunningLab, host: str) -> str:
    res = lab.lab.exec(host, ["ps", "-eo", "pid=,user=,args="])
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_snapshot_matches_ps_on_each_host(lab: RunningLab) -> None:
    for h in lab.site.hosts:
        # a transfer process carries its agent's name between its fork and its exec: a table
        # read in that instant shows the agent twice; read again until ps agrees with itself
        for _ in range(10):
            before = parse_processes(_ps_inside(lab, h.name), lab.site.commands)
            snap = snapshot_host(lab.shell, h.name)
            after = parse_processes(_ps_inside(lab, h.name), lab.site.commands)
            if before[0] == after[0]:
                break
        assert snap.reachable
        # agents are stable: exactly what ps shows (name, pid, user)
        assert [a.model_dump() for a in snap.agents] == [a.model_dump() for a in before[0]]
        assert [a.model_dump() for a in snap.agents] == [a.model_dump() for a in after[0]]
        # transfers come and go: each one the snapshot saw was in ps before or after it, and
        # each one ps saw both before and after was in the snapshot
        seen = {(t.channel, t.transfer_id) for t in snap.transfer_processes}
        b = {(t.channel, t.transfer_id) for t in before[1]}
        a = {(t.channel, t.transfer_id) for t in after[1]}
        assert seen <= b | a
        assert b & a <= seen
        disabled = lab.lab.exec(h.name, ["cat", str(lab.site.commands.disabled_file)]).stdout
        assert snap.disabled == [x for x in disabled.split() if x]
    site_snap = snapshot_site(lab.shell)
    assert set(site_snap.channels) == set(lab.site.channels)
    assert set(site_snap.channels.values()) == {"Active"}
    for a in lab.site.service.agents:
        assert site_snap.where(a.name) == [a.primary]


def test_the_hosts_commands_run_through_its_command_server(lab: RunningLab) -> None:
    """Each host starts its command server at boot (`infra.lab.cmdserver`): its socket is
    there (a client finding it never runs the command itself; `tests/test_cmdserver.py`), the
    commands answer through it, and it logged no error."""
    from infra.lab.cmdserver import SOCKET_PATH

    channel = lab.site.channels[0]
    script = f"test -S {SOCKET_PATH} || exit 9; glite-transfer-channel-list {channel}"
    for h in lab.site.hosts:
        res = lab.shell.run_argv(h.name, ["sh", "-c", script])
        assert res.exit_code == 0, (h.name, res)
        assert f"Channel: {channel}" in res.stdout
        log = lab.lab.paths.host_dir(h.name) / "log" / "cmdserver.log"
        assert log.read_text() == "", (h.name, log.read_text())


def test_init_drafts_the_lab_site_and_its_filled_draft_plans_as_the_lab_site_file(
    lab: RunningLab, tmp_path: Path
) -> None:
    """`handover init` reads the lab's hosts (read-only; one address answers nothing) and writes
    a draft: `check-config` names its TODOs; filled in, its agents are the lab site's and a
    clean move plans exactly as with the lab's own site file."""
    import yaml

    from config.loader import load_site
    from flows.plans.clean_move import MoveRequest, plan_clean_move
    from infra.cli import main

    site = lab.site
    assert site.database is not None
    db = site.database
    ghost = f"{site.hosts[0].address.rsplit('.', 1)[0]}.99"  # nothing listens there
    hosts = [f"{h.name}={h.address}:{h.port}" for h in site.hosts] + [f"ghost={ghost}:2222"]
    draft = tmp_path / "draft.yaml"
    argv = ["init", "--hosts", ",".join(hosts), "--key", str(site.ssh.key_file)]
    argv += ["--known-hosts", str(site.ssh.known_hosts), "--name", site.site]
    argv += ["--service", site.service.name, "--timeout", "2", "--out", str(draft)]
    argv += ["--db", f"postgresql://{db.user}@{db.host}:{db.port}/{db.database}"]
    # what a write would change: the agents' files in /etc (the `.disabled` file among them)
    look = [
        "sh",
        "-c",
        "stat -c '%n %Y %s' /etc/glite-data-transfer-agents.disabled /etc/transfer-agents/* 2>&1",
    ]
    before = {h.name: lab.shell.run_argv(h.name, look).stdout for h in site.hosts}
    assert main(argv) == 1  # one host did not answer: said, and listed in the draft
    text = draft.read_text()
    assert "# ghost did not answer: no SSH greeting" in text
    assert main(["check-config", str(draft)]) == 1
    data = yaml.safe_load(text)
    data["hosts"] = [h for h in data["hosts"] if h["name"] != "ghost"]
    data["database"]["password"] = db.password.model_dump(mode="json", exclude_none=True)
    assert site.dns is not None
    data["dns"] = site.dns.model_dump(mode="json", exclude_defaults=True)
    del data["slack"]
    filled = tmp_path / "filled.yaml"
    filled.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["check-config", str(filled)]) == 0
    mine = load_site(filled)
    assert {(a.name, a.primary, a.backup) for a in mine.service.agents} == {
        (a.name, a.primary, a.backup) for a in site.service.agents
    }
    assert mine.frontend is not None and site.frontend is not None
    assert mine.frontend.hosts == site.frontend.hosts
    snap = snapshot_site(lab.shell)
    req = MoveRequest(from_host="fts101", to_host="fts102")
    assert plan_clean_move(mine, snap, req) == plan_clean_move(site, snap, req)
    # nothing was written on the hosts
    assert before == {h.name: lab.shell.run_argv(h.name, look).stdout for h in site.hosts}
