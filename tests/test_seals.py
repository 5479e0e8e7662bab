"""The gateway's seal on a decision (pure: no server)."""

from __future__ import annotations

import pytest

from config.site import SecretRef, Slack
from flows.approval_seal import is_sealed, seal, seal_key, site_seal_key

KEY = seal_key("8f742231b10e8888abcd99yyyzzz85a5")
RUN = "44c1a60c-d772-432f-a36e-d2117f9404a9"
DECISION = (RUN, "approve", "<@U0LABOPS1>", "Slack")


def test_a_sealed_decision_verifies() -> None:
    assert is_sealed(KEY, *DECISION, seal(KEY, *DECISION))


@pytest.mark.parametrize("field", range(4))
def test_changing_anything_sealed_breaks_the_seal(field: int) -> None:
    changed = list(DECISION)
    changed[field] += "x"
    run, decision, who, source = changed
    assert not is_sealed(KEY, run, decision, who, source, seal(KEY, *DECISION))


def test_no_key_no_seal_or_another_key_never_verify() -> None:
    good = seal(KEY, *DECISION)
    assert not is_sealed(None, *DECISION, good)
    assert not is_sealed(KEY, *DECISION, "")
    assert not is_sealed(seal_key("another-secret-of-32-characters!"), *DECISION, good)


def test_the_key_is_not_the_signing_secret_itself() -> None:
    # the seal key is derived: knowing one seal key says nothing usable about Slack signatures
    assert KEY != b"8f742231b10e8888abcd99yyyzzz85a5" and len(KEY) == 32


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
