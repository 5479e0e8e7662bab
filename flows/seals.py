"""The gateway's seals: how a run tells what the gateway vouched for from what anyone typed.

Anyone who reaches Prefect's API can create a run with any parameters, resume a paused run through
the UI's form with any "who", or post an event. The gateway, which checked a Slack request's
signature and the approver list, or an alert's signature, seals what it vouches for with an
HMAC-SHA256 keyed from a secret of the site that the gateway and the runs both resolve from the
site file (the API never carries it):

* **a decision** (`seal`, `is_sealed`): over the run, the pause it answers, the decision, who
  and where, keyed from the Slack signing secret. The run checks the seal of the input it
  resumes with: a sealed decision is recorded as the gateway's, any other as typed in the Prefect
  UI, and a site whose policy says ``approval_via: gateway`` ignores the latter and keeps
  waiting. A seal names its run and its pause, so one copied from another run, or from an
  earlier pause of the same run, does not verify.
* **an alert** (`alert_seal`, `alert_seal_holds`): over the alert's event id, the host or geo
  site it is about (`geo_site_subject`) and the moment the gateway admitted it, keyed from the
  webhook secret. It travels in the event's payload into the runs that the event starts (the
  gateway's own, and the automations' as their backstop), and only a run whose seal verifies,
  created within `alerts.max_age_s` of that moment, takes the automatic paths (an automatic switch's
  countdown, an emergency policy that proceeds when nobody answers) and counts the monitoring, not a
  person, as its requester.

* **a rehearsal** (`rehearsal_seal`, `rehearsal_seal_holds`): over the site, the procedure, the
  plan's fingerprint, when it ran and whether it passed, keyed from the webhook secret (else the
  Slack signing secret). `handover rehearse`, run by an operator who has the site's secrets,
  seals its record; a run whose policy says ``rehearse: required`` counts only a record whose
  seal verifies, so a Prefect Variable written through the API clears nothing.

Keys are derived with a purpose of their own, so no seal is ever a valid signature of Slack's or
of a webhook sender's.
"""

from __future__ import annotations

import hashlib
import hmac

from config.site import Alerts, SecretError, Site, Slack

#: keeps each key apart from the secret's other uses
_DECISION_PURPOSE = b"handover approval seal v2"
_ALERT_PURPOSE = b"handover alert seal v1"
_REHEARSAL_PURPOSE = b"handover rehearsal seal v1"


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


def seal_key(signing_secret: str) -> bytes:
    """The key for decision seals, derived from the Slack signing secret."""
    return hmac.new(signing_secret.encode(), _DECISION_PURPOSE, hashlib.sha256).digest()


def site_seal_key(slack: Slack | None) -> bytes | None:
    """The site's decision seal key, or None when the site has no Slack section or its secret
    cannot be read."""
    if slack is None:
        return None
    try:
        secret = slack.signing_secret.resolve().get_secret_value()
    except SecretError:
        return None
    return seal_key(secret) if secret.strip() else None


def seal(key: bytes, run_id: str, pause_key: str, decision: str, who: str, source: str) -> str:
    """The seal of one decision at one pause of one run (hex)."""
    return _mac(key, run_id, pause_key, decision, who, source)


def is_sealed(
    key: bytes | None,
    run_id: str,
    pause_key: str,
    decision: str,
    who: str,
    source: str,
    given: str,
) -> bool:
    """Whether `given` is the gateway's seal of this decision at this pause of this run."""
    if key is None or not given or not pause_key:
        return False
    return hmac.compare_digest(seal(key, run_id, pause_key, decision, who, source), given)


def alert_seal_key(webhook_secret: str) -> bytes:
    """The key for alert seals, derived from the webhook secret."""
    return hmac.new(webhook_secret.encode(), _ALERT_PURPOSE, hashlib.sha256).digest()


def site_alert_seal_key(alerts: Alerts | None) -> bytes | None:
    """The site's alert seal key, or None when the site takes no alerts or its webhook secret
    cannot be read."""
    if alerts is None:
        return None
    try:
        secret = alerts.webhook_secret.resolve().get_secret_value()
    except SecretError:
        return None
    return alert_seal_key(secret) if secret.strip() else None


def geo_site_subject(name: str) -> str:
    """What an alert about the geo site `name` is about, as its seal and incident name it:
    ``geo-site:NAME``. A host's name has no colon (`config.site.HostName`), so a seal of a host
    alert never verifies for a geo site of the same name, nor the other way round."""
    return f"geo-site:{name}"


def alert_seal(key: bytes, alert_id: str, subject: str, admitted_at: float) -> str:
    """The seal of an alert about `subject` (a host's name, or `geo_site_subject`) admitted at
    `admitted_at` (epoch seconds): ``SECONDS:HEX``."""
    at = str(int(admitted_at))
    return f"{at}:{_mac(key, 'alert', alert_id, subject, at)}"


def alert_seal_holds(
    key: bytes | None,
    alert_id: str,
    subject: str,
    given: str,
    *,
    created_at: float,
    max_age_s: float,
) -> bool:
    """Whether `given` is the gateway's seal of this alert about `subject`, and the run that
    carries it was created within `max_age_s` of the alert's admission (a seal read from an old
    run's parameters cannot start an automatic path later)."""
    if key is None or not (alert_id and subject and given) or ":" not in given:
        return False
    at, _, _mac_hex = given.partition(":")
    if not at.isdigit():
        return False
    if not hmac.compare_digest(alert_seal(key, alert_id, subject, float(at)), given):
        return False
    return -60.0 <= created_at - int(at) <= max_age_s


def site_rehearsal_seal_key(site: Site) -> bytes | None:
    """The site's rehearsal seal key: from its webhook secret, else its Slack signing secret;
    None when it has neither or neither can be read."""
    refs = []
    if site.alerts is not None:
        refs.append(site.alerts.webhook_secret)
    if site.slack is not None:
        refs.append(site.slack.signing_secret)
    for ref in refs:
        try:
            secret = ref.resolve().get_secret_value()
        except SecretError:
            continue
        if secret.strip():
            return hmac.new(secret.encode(), _REHEARSAL_PURPOSE, hashlib.sha256).digest()
    return None


def rehearsal_seal(
    key: bytes, site: str, procedure: str, fingerprint: str, at: str, passed: bool
) -> str:
    """The seal of a rehearsal's record (hex); `at` is its time in ISO format."""
    return _mac(key, "rehearsal", site, procedure, fingerprint, at, "passed" if passed else "no")


def rehearsal_seal_holds(
    key: bytes | None,
    site: str,
    procedure: str,
    fingerprint: str,
    at: str,
    passed: bool,
    given: str,
) -> bool:
    """Whether `given` is the seal `handover rehearse` put on this record."""
    if key is None or not given:
        return False
    return hmac.compare_digest(rehearsal_seal(key, site, procedure, fingerprint, at, passed), given)
