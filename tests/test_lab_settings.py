"""The lab's section of a site file: no part of the production schema, read and checked by the lab
with its own model, with the field named and a fix like any other section."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import SiteConfigError, parse_site
from infra.lab.settings import lab_settings, load_lab_site
from tests.conftest import ROOT

LAB_SITE = ROOT / "config" / "sites" / "lab.yaml"


def _lab_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(LAB_SITE.read_text())
    return copy.deepcopy(data)


def test_the_lab_site_loads_with_its_settings() -> None:
    site, lab = load_lab_site(LAB_SITE)
    assert lab.state_dir.is_absolute()
    assert lab.hagd.interval_s * 3 <= lab.hagd.dt1_s
    assert lab_settings(site) == lab


def test_production_site_keeps_the_lab_section_unread() -> None:
    data = _lab_data()
    data["lab"]["tick_s"] = "often"
    site = parse_site(data, "lab.yaml")  # the product does not read the lab's settings
    with pytest.raises(SiteConfigError) as info:
        lab_settings(site, "lab.yaml")
    assert [p.path for p in info.value.problems] == ["lab.tick_s"]
    assert "lab.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "where", "words"),
    [
        (["lab", "state_dir"], "/tmp/lab", "lab.state_dir", "/var/tmp"),
        (["lab", "state_dir"], "var/lab", "lab.state_dir", "absolute"),
        (["hosts", 0, "address"], "10.0.0.1", "hosts[0].address", "outside 127.0.0.0/8"),
        (["lab", "hagd"], {"interval_s": 1.0}, "lab.hagd", "lower interval_s"),
        (["lab", "db_port"], 80, "lab.db_port", "larger value"),
        (["lab", "colour"], "blue", "lab.colour", "check its spelling"),
    ],
)
def test_a_malformed_lab_section_is_refused_with_the_field_named(
    tmp_path: Path, path: list[Any], value: Any, where: str, words: str
) -> None:
    data = _lab_data()
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(SiteConfigError) as info:
        load_lab_site(f)
    matching = [p for p in info.value.problems if p.path == where]
    assert matching, [str(p) for p in info.value.problems]
    assert any(words in f"{p.message} {p.fix}" for p in matching), [str(p) for p in matching]


def test_a_site_without_a_lab_section_is_no_lab_site() -> None:
    data = _lab_data()
    del data["lab"]
    with pytest.raises(SiteConfigError, match="no `lab:` section"):
        lab_settings(parse_site(data))
