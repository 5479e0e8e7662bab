"""Parsing recorded process tables (pure, no server)."""

from __future__ import annotations

from config.site import Commands
from flows.plans.snapshot import parse_etime
from tasks.site_state import parse_disabled, parse_processes

# `ps -eo pid=,user=,args=` as recorded on a lab host during a transfer burst
RECORDED_PS = """\
      1 root     bash /var/tmp/handover-lab/lab/hosts/fts101/init.sh
      8 root     sshd: /usr/sbin/sshd -D -f /var/tmp/handover-lab/lab/hosts/fts101/sshd_config
     10 root     sleep infinity
     15 edguser  glite-transfer-channel-agent-urlcopy-CERN-CERN
     16 edguser  glite-transfer-channel-agent-urlcopy-CERN-RAL
     21 edguser  CERN-CERN__1 5.10
     26 edguser  CERN-RAL__9 5.52
     27 edguser  CERN-RAL__12 0.52
     35 edguser  [sleep] <defunct>
     40 root     bash -c ps aux | grep glite-transfer-channel-agent | grep edguser
     41 root     grep glite-transfer-channel-agent-urlcopy-CERN-CERN
     44 edguser  glite-transfer-vo-agent-atlas
"""


def test_agents_and_transfers_are_parsed() -> None:
    agents, transfers = parse_processes(RECORDED_PS, Commands())
    assert [(a.name, a.pid, a.user) for a in agents] == [
        ("glite-transfer-channel-agent-urlcopy-CERN-CERN", 15, "edguser"),
        ("glite-transfer-channel-agent-urlcopy-CERN-RAL", 16, "edguser"),
        ("glite-transfer-vo-agent-atlas", 44, "edguser"),
    ]
    assert [(t.channel, t.transfer_id) for t in transfers] == [
        ("CERN-CERN", "1"),
        ("CERN-RAL", "9"),
        ("CERN-RAL", "12"),
    ]


# `ps -eo pid=,user=,etime=,args=` (the default profile's): each process's elapsed time too
RECORDED_PS_ETIME = """\
      1 root          10:05 bash /var/tmp/handover-lab/lab/hosts/fts101/init.sh
     15 edguser    09:58:01 glite-transfer-channel-agent-urlcopy-CERN-RAL
     21 edguser  2-01:00:00 CERN-RAL__9 5.52
     26 edguser       00:07 CERN-RAL__12 0.52
     27 edguser  CERN-RAL__13 0.52
     28 edguser       00:03 12:00 not a transfer
"""


def test_the_elapsed_time_column_gives_each_transfer_its_age() -> None:
    agents, transfers = parse_processes(RECORDED_PS_ETIME, Commands())
    assert [(a.name, a.pid) for a in agents] == [
        ("glite-transfer-channel-agent-urlcopy-CERN-RAL", 15)
    ]
    # a line without the column (another listing's) still parses, with no age
    assert [(t.transfer_id, t.age_s) for t in transfers] == [
        ("9", 2 * 86400 + 3600.0),
        ("12", 7.0),
        ("13", None),
    ]
    assert [parse_etime(x) for x in ("00:07", "01:02:03", "3-00:00:01", "5.52", "1:2:3:4")] == [
        7.0,
        3723.0,
        259201.0,
        None,
        None,
    ]
    # the three-column listing of older profiles gives no ages
    assert {t.age_s for t in parse_processes(RECORDED_PS, Commands())[1]} == {None}


def test_a_grep_for_an_agent_is_not_an_agent() -> None:
    agents, _ = parse_processes(RECORDED_PS, Commands())
    assert 41 not in {a.pid for a in agents} and 40 not in {a.pid for a in agents}


def test_garbage_lines_are_ignored() -> None:
    agents, transfers = parse_processes("\n  \nnot a pid line\n  x edguser foo\n", Commands())
    assert agents == [] and transfers == []


def test_disabled_file_parsing() -> None:
    assert parse_disabled("a\n\n  b  \n") == ["a", "b"]
    assert parse_disabled("") == []
