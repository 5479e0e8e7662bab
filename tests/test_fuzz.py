"""Fuzzing with Hypothesis: the gateway's endpoints and the site loader answer malformed, huge,
deeply nested or wrongly typed input with a 4xx or a precise config error, never a 500 or a
traceback (pure: FastAPI's test client, no Prefect behind the alert endpoints)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect.settings import PREFECT_API_URL, temporary_settings

from config.loader import SiteConfigError, load_site
from infra.fakeslack import signed_headers
from infra.gateway.alerts import sign
from infra.gateway.app import AlertSecrets, create_app
from infra.gateway.decide import Decider
from infra.gateway.incidents import Incidents
from infra.gateway.intake import AlertIntake
from tests.conftest import LAB_SITE

SITE = load_site(LAB_SITE)
SIGNING = "a-signing-secret-of-32-characters"
WEBHOOK = b"fuzz-webhook-secret-0123456789"
AM_TOKEN = "fuzz-alertmanager-token-0123"
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
# bodies that look like a generic alert, with fields of any type
alert_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | st.sampled_from(["lab", "fts101", "fts-lab", "host_down", "critical"])
        for k in ("site", "host", "service", "kind", "severity", "time", "summary", "dedup_key")
    },
)


@pytest.fixture(scope="module")
def client() -> Any:
    site = SITE.model_copy(
        update={
            "alerts": SITE.alerts.model_copy(  # type: ignore[union-attr]
                update={"max_age_s": 10.0}
            )
        }
    )
    decider = Decider(site)
    intake = AlertIntake(site, Incidents(300), decider.record)
    app = create_app(site, SIGNING, decider, intake, AlertSecrets(WEBHOOK, am_token=AM_TOKEN))
    with socket.socket() as s:  # the Prefect API is a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{dead}/api"}):
        with TestClient(app, raise_server_exceptions=False) as c:
            yield c


def _webhook(client: Any, body: bytes) -> int:
    ts = int(time.time())
    headers = {"X-Handover-Timestamp": str(ts), "X-Handover-Signature": sign(WEBHOOK, ts, body)}
    return int(client.post("/alerts/webhook", content=body, headers=headers).status_code)


# 503: a valid alert reached the (absent) Prefect API; every other answer is a refusal
WEBHOOK_OK = {202, 400, 413, 422, 503}


@FUZZ
@given(body=st.binary(max_size=2000))
def test_webhook_random_bytes(client: Any, body: bytes) -> None:
    assert _webhook(client, body) in WEBHOOK_OK


@FUZZ
@given(data=json_values)
def test_webhook_any_json(client: Any, data: Any) -> None:
    assert _webhook(client, json.dumps(data).encode()) in WEBHOOK_OK


@FUZZ
@given(data=alert_like)
def test_webhook_alert_shaped_json(client: Any, data: dict[str, Any]) -> None:
    assert _webhook(client, json.dumps(data).encode()) in WEBHOOK_OK


@pytest.mark.parametrize("depth", [100, 5000, 100_000])
def test_deeply_nested_bodies_are_refused_not_crashed(client: Any, depth: int) -> None:
    nested = ("[" * depth + "]" * depth).encode()
    assert _webhook(client, nested) in {400, 413}
    am = client.post(
        "/alerts/alertmanager",
        content=nested,
        headers={"Authorization": f"Bearer {AM_TOKEN}", "Content-Type": "application/json"},
    )
    assert am.status_code in {400, 413}, am.text
    form = "payload=" + "%5B" * min(depth, 20000) + "%5D" * min(depth, 20000)
    slack = client.post("/slack/interactions", content=form, headers=signed_headers(SIGNING, form))
    assert slack.status_code in {400, 413}, slack.text


@FUZZ
@given(data=json_values)
def test_alertmanager_any_json(client: Any, data: Any) -> None:
    r = client.post(
        "/alerts/alertmanager",
        content=json.dumps(data),
        headers={"Authorization": f"Bearer {AM_TOKEN}", "Content-Type": "application/json"},
    )
    assert r.status_code in {202, 400, 413, 422, 503}, r.text


@FUZZ
@given(payload=json_values, raw=st.text(max_size=300))
def test_slack_interactions_any_payload(client: Any, payload: Any, raw: str) -> None:
    from urllib.parse import quote

    for form in (f"payload={quote(json.dumps(payload))}", raw):
        r = client.post("/slack/interactions", content=form, headers=signed_headers(SIGNING, form))
        # a well-formed click is refused by the decider (200, ok false), or, as its Prefect
        # lookup fails here, answered 503; never a 500
        assert r.status_code in {200, 400, 401, 413, 503}, r.text


# --- the site loader ------------------------------------------------------------------------------

BASE = yaml.safe_load(LAB_SITE.read_text())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(BASE)


def _like(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same JSON kind as `value`: most are ones a field of that kind may take,
    so the loader's accepting side is tried as often as its refusing side."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min_value=-10, max_value=100_000)
    if isinstance(value, float):
        return st.floats(min_value=-10, max_value=100_000, allow_nan=False)
    if isinstance(value, str):
        return st.sampled_from([value, value.upper(), value + "x", ""]) | st.text(max_size=20)
    return json_values


# each example loads the site once or, when accepted, three times: 100 keep `make check` short
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(PATHS), data=st.data())
def test_site_loader_names_the_field_of_any_bad_value(
    tmp_path_factory: pytest.TempPathFactory, path: tuple[Any, ...], data: st.DataObject
) -> None:
    site_data = json.loads(json.dumps(BASE))
    node = site_data
    for key in path[:-1]:
        node = node[key]
    value = data.draw(json_values | _like(node[path[-1]]))
    node[path[-1]] = value
    f = tmp_path_factory.mktemp("fuzz") / "site.yaml"
    f.write_text(yaml.safe_dump(site_data))
    try:
        site = load_site(f)
    except SiteConfigError as exc:
        assert exc.problems, exc
        assert all(p.path and p.message and p.fix for p in exc.problems), exc.problems
        return
    # a value the loader accepts is one the site holds as it is: written back out, the site
    # loads again to the same site (nothing accepted that only a second look refuses or reads
    # differently)
    again = f.with_name("again.yaml")
    again.write_text(
        yaml.safe_dump(site.model_dump(mode="json", by_alias=True, exclude_unset=True))
    )
    assert load_site(again) == site


@FUZZ
@given(text=st.text(max_size=500))
def test_site_loader_any_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    f: Path = tmp_path_factory.mktemp("fuzz") / "site.yaml"
    f.write_text(text)
    with pytest.raises(SiteConfigError) as info:
        load_site(f)
    assert info.value.problems
