"""Several sites on one gateway: which site an alert or a Slack click is for, checked with that
site's credentials only.

`handover gateway --site A --site B` serves every site given from one process. Each site keeps
what is its own (`SiteGateway`): its webhook secret, its Alertmanager credentials, its Slack
signing secret, its incident book, its run starter (its own deployments) and its audit. A
request is routed before anything acts on it:

* a generic alert goes to the site its body names (``site``, and ``service`` when two site
  files share a site's name), and its signature is checked with that site's webhook secret
  only: an alert signed with site A's secret is refused for site B (401). An alert that names no
  site of this gateway is refused (422, with the sites there are, and an audit line), and only
  to a sender that holds one site's secret: anyone else hears "bad signature" (401), so the
  sites served are not told to strangers;
* an Alertmanager notification is accepted when its credentials are one site's; each of its
  alerts goes to the site its ``site`` label names (without one: the only site, or the only
  site whose credentials were given), and an alert of a site whose credentials were not given,
  or of no site of this gateway, is refused on its own (the others are taken);
* a Slack click is verified with each site's signing secret; the sites whose secret verifies
  it may decide, and the run's own site decides (a site never resumes another's run:
  `Decider.decide`).

Sites that share a webhook secret or Alertmanager credentials are refused at the start: one
could then sign for the other. One Slack app may serve several sites (one signing secret): the
run's site still decides.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from slack_sdk.signature import SignatureVerifier

from config.site import Site
from infra.gateway.alerts import (
    Alert,
    AlertRefused,
    alertmanager_alerts,
    check_basic_or_bearer,
    parse_generic,
    read_alertmanager,
    verify_signature,
)
from infra.gateway.decide import Decider
from infra.gateway.intake import AlertIntake

#: Slack requests: the replay window and the largest body, unless the site's `alerts` section
#: sets them (`signature_window_s`, `max_body_bytes`)
WINDOW_S = 300.0
MAX_BODY = 64 * 1024


class AlertSecrets:
    """The resolved credentials of the alert endpoints (never logged)."""

    def __init__(
        self, webhook: bytes, am_token: str | None = None, am_password: str | None = None
    ) -> None:
        self.webhook = webhook
        self.am_token = am_token
        self.am_password = am_password


@dataclass
class SiteGateway:
    """What the gateway holds for one site: its credentials, its decider (approvals and the
    audit) and its alert intake (None: the site takes no alerts)."""

    site: Site
    signing_secret: str | None
    decider: Decider
    intake: AlertIntake | None = None
    alert_secrets: AlertSecrets | None = None
    _verifier: SignatureVerifier | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """``lab (service fts-lab)``: how answers and audit lines name the site."""
        return f"{self.site.site} (service {self.site.service.name})"

    @property
    def takes_alerts(self) -> bool:
        """Whether the site has the alert endpoints (an `alerts` section, resolved)."""
        return (
            self.intake is not None
            and self.alert_secrets is not None
            and self.site.alerts is not None
        )

    @property
    def window_s(self) -> float:
        """The replay window of the site's signed requests."""
        return self.site.alerts.signature_window_s if self.site.alerts else WINDOW_S

    @property
    def max_body(self) -> int:
        """The largest request body the site takes."""
        return self.site.alerts.max_body_bytes if self.site.alerts else MAX_BODY

    def slack_signed(self, body: bytes, timestamp: str, signature: str) -> bool:
        """Whether Slack's signature of the request holds under this site's signing secret."""
        if self.signing_secret is None:
            return False
        if self._verifier is None:
            self._verifier = SignatureVerifier(self.signing_secret)
        return bool(self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature))


class Refused(AlertRefused):
    """A request refused (`status`, `reason`), and the site whose audit records it (`by`)."""

    def __init__(self, status: int, reason: str, by: SiteGateway) -> None:
        super().__init__(status, reason)
        self.by = by


class SitesError(ValueError):
    """The sites cannot be served together (the message names them and why)."""


class Sites:
    """The sites of one gateway and the routing of its requests (module docstring).

    Raises:
        SitesError: no site, the same site and service twice, or two sites sharing a webhook
            secret or Alertmanager credentials.
    """

    def __init__(self, gateways: Sequence[SiteGateway]) -> None:
        if not gateways:
            raise SitesError("no site to serve")
        self.gateways = list(gateways)
        seen: dict[tuple[str, str], SiteGateway] = {}
        for g in self.gateways:
            key = (g.site.site, g.site.service.name)
            if key in seen:
                raise SitesError(f"{g.name} is given twice: give each site and service once")
            seen[key] = g
        for i, a in enumerate(self.alert_sites):
            for b in self.alert_sites[i + 1 :]:
                shared = _shared_credentials(a, b)
                if shared:
                    raise SitesError(
                        f"{a.name} and {b.name} share their {shared}: an alert signed for one "
                        "would be taken for the other; give each site its own"
                    )

    @property
    def first(self) -> SiteGateway:
        """The first site given (it records what belongs to no site)."""
        return self.gateways[0]

    @property
    def alert_sites(self) -> list[SiteGateway]:
        """The sites that take alerts."""
        return [g for g in self.gateways if g.takes_alerts]

    def served(self) -> str:
        """The sites served, for an answer: ``lab (service fts-lab), ...``."""
        return ", ".join(g.name for g in self.gateways)

    def route(self, site: str | None, service: str | None) -> SiteGateway:
        """The site that takes an alert labelled `site` (and `service`, when two site files
        share the site's name). A gateway of one site gives it every alert: the alert's own
        checks then say what is wrong with it, a missing field first, as they always have.

        Raises:
            AlertRefused: 422: no site of this gateway is named (the message lists them).
        """
        sites = self.alert_sites
        if len(sites) == 1:
            return sites[0]
        if not site:
            raise AlertRefused(
                422, f"the alert names no site (this gateway serves {self.served()})"
            )
        named = [g for g in sites if g.site.site == site]
        if len(named) > 1:
            named = [g for g in named if g.site.service.name == service]
        if len(named) != 1:
            what = f"unknown site {site!r}" if not named else f"unknown service {service!r}"
            raise AlertRefused(422, f"{what} (this gateway serves {self.served()})")
        return named[0]

    def webhook(
        self, timestamp: str, signature: str, body: bytes, now: float
    ) -> tuple[SiteGateway, Alert]:
        """The site a generic alert is for and the alert, checked with that site's secret.

        Raises:
            Refused: 401 (signature), 413 (over the site's limit), 400 or 422 (the body, an
                unknown site, host or service), with the site whose audit records it.
        """
        label = _labels(body)
        try:
            gw = self.route(*label)
        except AlertRefused as unrouted:
            # said only to a sender that holds a site's secret; anyone else hears the signature
            signer = next(
                (g for g in self.alert_sites if _signed(g, timestamp, signature, body, now)), None
            )
            if signer is None:
                raise self._bad_signature(
                    self.alert_sites[0], timestamp, signature, body, now
                ) from None
            raise Refused(unrouted.status, unrouted.reason, signer) from None
        assert gw.alert_secrets is not None
        try:
            verify_signature(
                gw.alert_secrets.webhook,
                timestamp,
                signature,
                body,
                window_s=gw.window_s,
                now=now,
            )
            if len(body) > gw.max_body:
                raise AlertRefused(413, f"body over {gw.max_body} bytes")
            return gw, parse_generic(gw.site, body)
        except AlertRefused as exc:
            raise Refused(exc.status, exc.reason, gw) from None

    @staticmethod
    def _bad_signature(
        gw: SiteGateway, timestamp: str, signature: str, body: bytes, now: float
    ) -> Refused:
        assert gw.alert_secrets is not None
        try:
            verify_signature(
                gw.alert_secrets.webhook, timestamp, signature, body, window_s=gw.window_s, now=now
            )
        except AlertRefused as exc:
            return Refused(exc.status, exc.reason, gw)
        return Refused(401, "bad signature", gw)

    def alertmanager(
        self, authorization: str, body: bytes
    ) -> tuple[list[tuple[SiteGateway, Alert]], list[tuple[SiteGateway, str]]]:
        """The alerts of an Alertmanager notification, each with its site, and why any were
        refused (each with the site whose audit records it).

        Raises:
            Refused: 404 (no site takes Alertmanager's notifications), 401 (the credentials are
                no site's), 413 or 400 (the body).
        """
        am = [g for g in self.alert_sites if g.site.alerts and g.site.alerts.alertmanager]
        if not am:
            raise Refused(404, "no alerts.alertmanager in the site file", self.first)
        authed: list[SiteGateway] = []
        refusal: Refused | None = None
        for g in am:
            assert g.site.alerts is not None and g.site.alerts.alertmanager is not None
            assert g.alert_secrets is not None
            try:
                check_basic_or_bearer(
                    g.site.alerts.alertmanager,
                    authorization,
                    g.alert_secrets.am_token,
                    g.alert_secrets.am_password,
                )
            except AlertRefused as exc:
                refusal = refusal or Refused(exc.status, exc.reason, g)
                continue
            authed.append(g)
        if not authed:
            assert refusal is not None
            raise refusal
        limit = max(g.max_body for g in authed)
        if len(body) > limit:
            raise Refused(413, f"body over {limit} bytes", authed[0])
        try:
            payload = read_alertmanager(body)
        except AlertRefused as exc:
            raise Refused(exc.status, exc.reason, authed[0]) from None
        positions: dict[int, set[int]] = {}
        problems: list[tuple[SiteGateway, str]] = []
        for i, item in enumerate(payload.alerts):
            what = f"alerts[{i}] ({item.labels.get('alertname', '')})"
            try:
                gw = self._alertmanager_site(item.labels, authed)
            except AlertRefused as exc:
                problems.append((authed[0], f"{what}: {exc.reason}"))
                continue
            if gw not in authed:
                problems.append(
                    (
                        gw,
                        f"{what}: the credentials given are not those of {gw.name} (they are "
                        f"{', '.join(g.name for g in authed)}'s)",
                    )
                )
                continue
            positions.setdefault(self.gateways.index(gw), set()).add(i)
        found: list[tuple[int, SiteGateway, Alert]] = []
        for index, only in positions.items():
            gw = self.gateways[index]
            assert gw.site.alerts is not None and gw.site.alerts.alertmanager is not None
            alerts, refused = alertmanager_alerts(
                gw.site, gw.site.alerts.alertmanager, payload, only
            )
            found += [(i, gw, a) for i, a in alerts]
            problems += [(gw, p) for p in refused]
        return [(gw, a) for _, gw, a in sorted(found, key=lambda x: x[0])], problems

    def _alertmanager_site(self, labels: dict[str, str], authed: list[SiteGateway]) -> SiteGateway:
        if labels.get("site") or len(self.alert_sites) == 1:
            return self.route(labels.get("site"), labels.get("service"))
        if len(authed) == 1:
            return authed[0]  # the only site whose credentials were given
        raise AlertRefused(
            422,
            "no site label, and the credentials are those of several sites "
            f"({', '.join(g.name for g in authed)}): label the alert with its site",
        )

    def slack(self, timestamp: str, signature: str, body: bytes, now: float) -> list[SiteGateway]:
        """The sites whose Slack signing secret verifies a Slack request (one, unless sites
        share a Slack app).

        Raises:
            Refused: 404 (no site has a signing secret), 401 (a missing, malformed or stale
                timestamp, or a signature no site's secret verifies).
        """
        slack = [g for g in self.gateways if g.signing_secret is not None]
        if not slack:
            raise Refused(404, "this gateway has no Slack signing secret", self.first)
        try:
            age = abs(now - int(timestamp))
        except ValueError:
            raise Refused(401, "missing or malformed X-Slack-Request-Timestamp", slack[0]) from None
        fresh = [g for g in slack if age <= g.window_s]
        if not fresh:
            raise Refused(401, f"stale request: timestamp {int(age)} s away (replay?)", slack[0])
        signed = [g for g in fresh if g.slack_signed(body, timestamp, signature)]
        if not signed:
            raise Refused(401, "bad signature", slack[0])
        return signed


def _labels(body: bytes) -> tuple[str | None, str | None]:
    """The ``site`` and ``service`` a generic alert's body names (None where it names none, or
    is not a JSON object): what it is routed by, before its signature is checked."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    site, service = data.get("site"), data.get("service")
    return (
        site if isinstance(site, str) else None,
        service if isinstance(service, str) else None,
    )


def _signed(gw: SiteGateway, timestamp: str, signature: str, body: bytes, now: float) -> bool:
    assert gw.alert_secrets is not None
    try:
        verify_signature(
            gw.alert_secrets.webhook, timestamp, signature, body, window_s=gw.window_s, now=now
        )
    except AlertRefused:
        return False
    return True


def _shared_credentials(a: SiteGateway, b: SiteGateway) -> str:
    """What two sites' alert credentials share ("" when nothing)."""
    sa, sb = a.alert_secrets, b.alert_secrets
    if sa is None or sb is None:
        return ""
    if sa.webhook and hmac.compare_digest(sa.webhook, sb.webhook):
        return "webhook secret (alerts.webhook_secret)"
    for x, y, what in (
        (sa.am_token, sb.am_token, "Alertmanager bearer token"),
        (sa.am_password, sb.am_password, "Alertmanager basic auth password"),
    ):
        if x and y and hmac.compare_digest(x.encode(), y.encode()):
            return what
    return ""
