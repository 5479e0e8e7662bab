"""The gateway's seal on an approval decision: how a paused run tells a Slack click from a form.

Anyone who reaches Prefect's API can resume a paused run through the UI's form and type any name
as "who". The gateway, which checked the Slack signature and the approver list, adds a seal to the
input it resumes with: an HMAC-SHA256, over the run, the decision, who and where, keyed with a key
derived from the site's Slack signing secret (which the gateway and the runs both resolve from the
site file; the API never carries it). The run checks the seal: a sealed decision is recorded as
the gateway's, any other as typed in the Prefect UI, and a site whose policy says
``approval_via: gateway`` ignores the latter and keeps waiting.

A seal names its run, so one copied from another run's input does not verify.
"""

from __future__ import annotations

import hashlib
import hmac

from config.site import SecretError, Slack

#: keeps this key apart from the signing secret's use for Slack's request signatures
_PURPOSE = b"handover approval seal v1"


def seal_key(signing_secret: str) -> bytes:
    """The key for seals, derived from the Slack signing secret."""
    return hmac.new(signing_secret.encode(), _PURPOSE, hashlib.sha256).digest()


def site_seal_key(slack: Slack | None) -> bytes | None:
    """The site's seal key, or None when the site has no Slack section or its secret is unset."""
    if slack is None:
        return None
    try:
        secret = slack.signing_secret.resolve().get_secret_value()
    except SecretError:
        return None
    return seal_key(secret) if secret.strip() else None


def _message(run_id: str, decision: str, who: str, source: str) -> bytes:
    return "\x1f".join((run_id, decision, who, source)).encode()


def seal(key: bytes, run_id: str, decision: str, who: str, source: str) -> str:
    """The seal of one decision on one run (hex)."""
    return hmac.new(key, _message(run_id, decision, who, source), hashlib.sha256).hexdigest()


def is_sealed(
    key: bytes | None, run_id: str, decision: str, who: str, source: str, given: str
) -> bool:
    """Whether `given` is the gateway's seal of this decision on this run."""
    if key is None or not given:
        return False
    return hmac.compare_digest(seal(key, run_id, decision, who, source), given)
