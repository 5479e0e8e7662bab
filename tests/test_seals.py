"""The gateway's seals on decisions and on alerts (pure: no server)."""

from __future__ import annotations

import pytest

from config.site import Alerts, SecretRef, Slack
from flows.seals import (
    alert_seal,
    alert_seal_holds,
    alert_seal_key,
    geo_site_subject,
    is_sealed,
    seal,
    seal_key,
    site_alert_seal_key,
    site_seal_key,
)

KEY = seal_key("8f742231b10e8888abcd99yyyzzz85a5")
RUN = "44c1a60c-d772-432f-a36e-d2117f9404a9"
DECISION = (RUN, "approval-1", "approve", "<@U0LABOPS1>", "Slack")


def test_a_sealed_decision_verifies() -> None:
    assert is_sealed(KEY, *DECISION, seal(KEY, *DECISION))


@pytest.mark.parametrize("field", range(5))
def test_changing_anything_sealed_breaks_the_seal(field: int) -> None:
    changed = list(DECISION)
    changed[field] += "x"
    run, pause, decision, who, source = changed
    assert not is_sealed(KEY, run, pause, decision, who, source, seal(KEY, *DECISION))


def test_a_decision_sealed_for_one_pause_does_not_verify_at_the_next() -> None:
    first = seal(KEY, *DECISION)
    run, _pause, decision, who, source = DECISION
    assert not is_sealed(KEY, run, "approval-2", decision, who, source, first)
    assert not is_sealed(KEY, run, "", decision, who, source, first)


def test_no_key_no_seal_or_another_key_never_verify() -> None:
    good = seal(KEY, *DECISION)
    assert not is_sealed(None, *DECISION, good)
    assert not is_sealed(KEY, *DECISION, "")
    assert not is_sealed(seal_key("another-secret-of-32-characters!"), *DECISION, good)


def test_the_key_is_not_the_signing_secret_itself() -> None:
    # the seal key is derived: knowing one seal key says nothing usable about Slack signatures
    assert KEY != b"8f742231b10e8888abcd99yyyzzz85a5" and len(KEY) == 32
    assert alert_seal_key("8f742231b10e8888abcd99yyyzzz85a5") != KEY


def test_the_site_key_comes_from_the_slack_signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    slack = Slack(
        channel="#ops",
        approvers=["U0LABOPS1"],
        bot_token=SecretRef(env="SEAL_TEST_TOKEN"),
        signing_secret=SecretRef(env="SEAL_TEST_SECRET"),
    )
    monkeypatch.delenv("SEAL_TEST_SECRET", raising=False)
    assert site_seal_key(slack) is None  # unset: nothing is sealed, nothing verifies
    assert site_seal_key(None) is None
    monkeypatch.setenv("SEAL_TEST_SECRET", "8f742231b10e8888abcd99yyyzzz85a5")
    assert site_seal_key(slack) == KEY


AKEY = alert_seal_key("alert-webhook-secret-of-the-site")
EVENT = "0b7f7a43-6f0e-5b55-9d3e-1f2a8c0d4e61"


def test_an_alert_seal_holds_for_its_alert_and_host_in_a_run_created_soon_after() -> None:
    given = alert_seal(AKEY, EVENT, "fts101", 1_000_000.0)
    assert alert_seal_holds(AKEY, EVENT, "fts101", given, created_at=1_000_002.0, max_age_s=600)


@pytest.mark.parametrize(
    ("alert_id", "host", "created_at"),
    [
        ("another-event", "fts101", 1_000_002.0),  # another alert's
        (EVENT, "fts102", 1_000_002.0),  # another host's
        (EVENT, "fts101", 1_000_601.0),  # a run created after the bound: a seal read back later
    ],
)
def test_an_alert_seal_holds_for_nothing_else(alert_id: str, host: str, created_at: float) -> None:
    given = alert_seal(AKEY, EVENT, "fts101", 1_000_000.0)
    assert not alert_seal_holds(AKEY, alert_id, host, given, created_at=created_at, max_age_s=600)


def test_a_host_alerts_seal_never_holds_for_a_geo_site_of_the_same_name() -> None:
    # a geo site named like a host: the seal of the host's alert (the same event id copied into
    # a geo-site-down run) does not take the control switch's automatic path, nor the other way
    host = alert_seal(AKEY, EVENT, "site-a", 1_000_000.0)
    geo = alert_seal(AKEY, EVENT, geo_site_subject("site-a"), 1_000_000.0)
    when = {"created_at": 1_000_002.0, "max_age_s": 600}
    assert not alert_seal_holds(AKEY, EVENT, geo_site_subject("site-a"), host, **when)
    assert not alert_seal_holds(AKEY, EVENT, "site-a", geo, **when)
    assert alert_seal_holds(AKEY, EVENT, geo_site_subject("site-a"), geo, **when)


def test_a_forged_or_altered_alert_seal_never_holds() -> None:
    given = alert_seal(AKEY, EVENT, "fts101", 1_000_000.0)
    later = given.replace("1000000:", "1000500:")  # moved forward to pass the age bound
    for bad in (
        "",
        "junk",
        later,
        given[:-1] + "0",
        alert_seal(alert_seal_key("x"), EVENT, "fts101", 1e6),
    ):
        assert not alert_seal_holds(
            AKEY, EVENT, "fts101", bad, created_at=1_000_002.0, max_age_s=600
        )
    assert not alert_seal_holds(None, EVENT, "fts101", given, created_at=1_000_002.0, max_age_s=600)


def test_the_site_alert_key_comes_from_the_webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    alerts = Alerts(webhook_secret=SecretRef(env="SEAL_TEST_WEBHOOK"))
    monkeypatch.delenv("SEAL_TEST_WEBHOOK", raising=False)
    assert site_alert_seal_key(alerts) is None and site_alert_seal_key(None) is None
    monkeypatch.setenv("SEAL_TEST_WEBHOOK", "alert-webhook-secret-of-the-site")
    assert site_alert_seal_key(alerts) == AKEY
