"""A geo lab for tests (`infra.lab.geo`): two sites sharing a replicated tool, real MariaDB,
BIND9 and HTTPS, at addresses, ports and a state directory of the test session's own.

Use it from a test module, as `tests.alert_stack`'s stack (the fixture is the module's own)::

    from tests.geo_lab import RunningGeoLab, start_geo_lab

    @pytest.fixture(scope="module")
    def geo_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGeoLab]:
        yield from start_geo_lab(tmp_path_factory)

    @pytest.mark.lab
    def test_something(geo_lab: RunningGeoLab) -> None: ...

Every test that takes the fixture must be marked ``lab`` (by hand: `tests/conftest.py` gives the
tier from the fixture named ``lab`` only). One lab per module, stopped (and checked: nothing
left running) after its last test. Its loopback block is the next lab
number of the session (``HANDOVER_TEST_LAB_BASE``, as every test lab's), its ports a block of
this process's free ports (``HANDOVER_FREE_PORTS``, `infra.ports`), its state under
``/var/tmp/handover-lab/geotestN-PID``: a lab an operator runs from config/sites/geo-lab.yaml is
never touched. A missing binary skips the tests with the apt-get line to run, and fails them in
CI (``CI=true``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import load_site
from config.site import DnsServer, Site, Tool
from infra.lab.geo.derive import derive_geo_site_file, port_count
from infra.lab.geo.lab import APT_PACKAGES, GeoLab, missing_prerequisites
from infra.ports import free_port_block
from tests.conftest import ROOT, _lab_numbers, require

GEO_SITE = ROOT / "config" / "sites" / "geo-lab.yaml"


def require_geo_lab() -> None:
    """Skip (developer machine) or fail (CI) when the geo lab cannot run here."""
    missing = missing_prerequisites()
    require(
        not missing,
        "; ".join(missing) + f" (as root: apt-get install -y {APT_PACKAGES})",
        need="lab",
    )


def derive_test_site(tmp: Path, octet: int | None = None) -> Path:
    """A copy of the geo lab site for a test lab (module docstring): its own octet, ports and
    state directory."""
    n = next(_lab_numbers) if octet is None else octet
    count = port_count(yaml.safe_load(GEO_SITE.read_text()))
    return derive_geo_site_file(
        GEO_SITE,
        tmp / f"geotest{n}.yaml",
        n,
        free_port_block(count),
        state_dir=Path("/var/tmp/handover-lab") / f"geotest{n}-{os.getpid()}",
        name=f"geotest{n}",
    )


class RunningGeoLab:
    """A started geo lab, its site, and what tests ask of it."""

    def __init__(self, site_file: Path, lab: GeoLab, report: dict[str, Any]) -> None:
        self.site_file = site_file
        self.site: Site = load_site(site_file)
        self.lab = lab
        #: what `GeoLab.up` returned (its phases' seconds among it)
        self.report = report
        assert self.site.geo is not None
        self.geo = self.site.geo
        self.tool: Tool = self.geo.tools[0]
        #: the sites in file order: the first is where the tool starts active
        self.sites = [s.name for s in self.geo.sites]

    @property
    def name(self) -> str:
        """The tool's first name (the one its certificate covers)."""
        return self.tool.names[0]

    def address(self, site: str) -> str:
        """The tool's address at `site`."""
        return self.tool.sites[site].address

    def resolver(self, site: str) -> DnsServer:
        """The first caching resolver of `site`."""
        return self.geo.site(site).resolvers[0]

    def masters(self) -> list[DnsServer]:
        """Every master of every site."""
        return [m for _, m in self.geo.masters()]

    def set_address(self, name: str, address: str) -> None:
        """Point `name`'s A record at `address` on every master that runs (a TSIG-signed RFC
        2136 replace, as handover sends; no compare-and-set: the test knows what is there)."""
        import dns.name
        import dns.query
        import dns.tsigkeyring
        import dns.update

        secret = self.geo.tsig_key.resolve().get_secret_value()
        keyname = dns.name.from_text(self.geo.tsig_key_name)
        keyring = dns.tsigkeyring.from_text({self.geo.tsig_key_name: secret})
        for m in self.masters():
            u = dns.update.UpdateMessage(
                self.geo.zone,
                keyring=keyring,
                keyname=keyname,
                keyalgorithm=self.geo.tsig_algorithm,
            )
            u.replace(name.rstrip(".") + ".", self.geo.ttl_s, "A", address)
            r = dns.query.tcp(u, m.address, port=m.port, timeout=2)
            assert r.rcode() == 0, (m, r.rcode())


def start_geo_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGeoLab]:
    """A module's `geo_lab` fixture's body: up, yield, down (checked), state removed."""
    require_geo_lab()
    site_file = derive_test_site(tmp_path_factory.mktemp("geo"))
    lab = GeoLab.from_file(site_file)
    report = lab.up()
    try:
        yield RunningGeoLab(site_file, lab, report)
    finally:
        down = lab.down()
        assert down["leftovers"] == [], down
        lab.remove_state()
