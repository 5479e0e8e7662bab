"""Parsing recorded process tables (pure, no server)."""

from __future__ import annotations

from config.site import Commands
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


def test_a_grep_for_an_agent_is_not_an_agent() -> None:
    agents, _ = parse_processes(RECORDED_PS, Commands())
    assert 41 not in {a.pid for a in agents} and 40 not in {a.pid for a in agents}


def test_garbage_lines_are_ignored() -> None:
    agents, transfers = parse_processes("\n  \nnot a pid line\n  x edguser foo\n", Commands())
    assert agents == [] and transfers == []


def test_disabled_file_parsing() -> None:
    assert parse_disabled("a\n\n  b  \n") == ["a", "b"]
    assert parse_disabled("") == []
