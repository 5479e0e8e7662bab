"""Lab sites derived from the lab's: a generated site of N hosts and its services."""

from __future__ import annotations

import pytest

from config.loader import load_site
from infra.lab.derive import scaled_site, service_sites
from infra.lab.errors import LabError
from tests.conftest import ROOT

BASE = load_site(str(ROOT / "config" / "sites" / "lab.yaml"))


def test_a_generated_site_backs_each_host_by_the_next() -> None:
    site = scaled_site(BASE, 6)
    assert [h.name for h in site.hosts] == [f"fts{101 + i}" for i in range(6)]
    assert site.agents_on("fts106")[0].backup == "fts101"  # a ring
    assert len({h.address for h in site.hosts}) == 6


def test_services_are_consecutive_hosts_with_their_own_names_and_inner_agents() -> None:
    sites = service_sites(scaled_site(BASE, 50), 10)
    assert len(sites) == 10
    assert len({s.site for s in sites}) == len({s.service.name for s in sites}) == 10
    hosts = [h.name for s in sites for h in s.hosts]
    assert hosts == [f"fts{101 + i}" for i in range(50)]  # each host in exactly one
    for s in sites:
        names = {h.name for h in s.hosts}
        assert len(names) == 5
        # the agents whose both hosts lie in the service: the first host's moves stay inside
        assert all(a.primary in names and a.backup in names for a in s.service.agents)
        assert s.agents_on(s.hosts[0].name) and s.agents_on(s.hosts[2].name)
        assert s.frontend is None and s.dns is None and s.slack is None
    second = sites[1]
    assert [a.channel for a in second.service.agents] == [
        "CERN-T006",
        "CERN-T007",
        "CERN-T008",
        "CERN-T009",
    ]
    # the ring's wrap-around agent (fts150 backed by fts101) belongs to no service
    assert not any(a.primary == "fts150" for s in sites for a in s.service.agents)


def test_too_many_services_for_the_hosts_is_refused() -> None:
    with pytest.raises(LabError, match="at least 4 hosts each"):
        service_sites(scaled_site(BASE, 12), 4)
    with pytest.raises(LabError):
        service_sites(scaled_site(BASE, 12), 0)
