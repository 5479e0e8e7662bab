"""Alert intake (the gateway): how monitors authenticate, and what each kind of alert starts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    model_validator,
)

from config.site.base import SiteModel
from config.site.secrets import SecretRef

AlertKind = Literal[
    "host_down",
    "service_down",
    "resource_failed",
    "frontend_down",
    "site_down",
    "recovered",
    "ha_event",
]
#: what each kind of alert says happened (the gateway's intake and the documentation)
ALERT_KIND_MEANING: dict[AlertKind, str] = {
    "host_down": "a host of the site stopped answering (a monitor's host check, Pacemaker's "
    "node fencing or loss)",
    "service_down": "the agents' service failed on a host (a monitor's service check)",
    "resource_failed": "a cluster resource of a host failed (Pacemaker's alert agent)",
    "frontend_down": "the service's web front end failed on a host (the switch's sensor, "
    "Heartbeat's takeover script)",
    "site_down": "a site of the tools replicated between sites (`geo:`) is lost: its tools, "
    "databases and DNS masters stopped answering for the site's bound (the alert names the geo "
    "site, not a host)",
    "recovered": "a monitor resolved its alert: noted on the host's open incident, starts nothing",
    "ha_event": "the HA group daemon's election, loss or failure: noted on the host's open "
    "incident, starts nothing by default",
}
AlertProcedure = Literal["emergency-move", "switch", "geo-site-down"]


DEFAULT_AM_KINDS: dict[str, AlertKind] = {
    "HostDown": "host_down",
    "FtsAgentDown": "service_down",
    "HandoverGeoSiteDown": "site_down",
}
# a failure of an agent host (or of one of its resources) moves its agents; a failure of the
# front end switches the master role and the alias; a lost geo site fails its tools over. A
# procedure the site does not have (the agents' on a site of web tools, the geo control switch
# on a site without `geo:`) is not started: the alert is recorded
DEFAULT_ALERT_PROCEDURES: dict[AlertKind, AlertProcedure] = {
    "host_down": "emergency-move",
    "service_down": "emergency-move",
    "resource_failed": "emergency-move",
    "frontend_down": "switch",
    "site_down": "geo-site-down",
}


class BasicAuth(SiteModel):
    """HTTP basic auth as Alertmanager sends it (`http_config.basic_auth`)."""

    #: the user name Alertmanager sends
    username: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    #: its password (a reference, never the value)
    password: SecretRef


class AlertmanagerIntake(SiteModel):
    """How the gateway authenticates Alertmanager, and how its alerts map to handover's kinds."""

    #: the bearer token Alertmanager sends (or `basic_auth`)
    bearer_token: SecretRef | None = None
    #: the user and password Alertmanager sends (or `bearer_token`)
    basic_auth: BasicAuth | None = None
    #: alertname -> kind, for alerts without a `handover_kind` label
    kinds: dict[str, AlertKind] = Field(default_factory=lambda: dict(DEFAULT_AM_KINDS))

    @model_validator(mode="after")
    def _one_auth(self) -> AlertmanagerIntake:
        if (self.bearer_token is None) == (self.basic_auth is None):
            raise ValueError(
                "set exactly one of bearer_token or basic_auth (as in Alertmanager's "
                "webhook_configs[].http_config)"
            )
        return self


class Alerts(SiteModel):
    """Alert intake (the gateway) and what alerts start.

    Example:
        ``alerts: {webhook_secret: {env: HANDOVER_WEBHOOK_SECRET}, dedup_window_s: 300}``
    """

    #: the HMAC-SHA256 secret of `POST /alerts/webhook` (hooks and generic monitors)
    webhook_secret: SecretRef
    #: how Alertmanager's webhooks are accepted (none: refused)
    alertmanager: AlertmanagerIntake | None = None
    #: identical alerts for one host within this window start one run; later ones attach to it
    dedup_window_s: float = Field(default=300.0, ge=1, le=86400)
    #: the accepted clock skew of signed requests (replay window)
    signature_window_s: float = Field(default=300.0, ge=10, le=3600)
    #: the largest request body the gateway reads
    max_body_bytes: int = Field(default=65536, ge=1024, le=1048576)
    #: an alert whose event is older than this (a spooled one delivered after an outage) is
    #: recorded, not acted on, unless a fresh probe of its host confirms the failure
    max_age_s: float = Field(default=600.0, ge=10, le=86400)
    #: the incident book shared by every gateway of the site: a reference to the URL of a
    #: PostgreSQL database (postgresql://USER:PASSWORD@HOST:PORT/DATABASE); unset, each gateway
    #: keeps its own book in memory (one gateway)
    incident_store: SecretRef | None = None
    #: the `for:` of the shipped Prometheus rules for this site, by alert name, in seconds, as
    #: `handover rules` renders them (e.g. ``{HandoverHostDown: 60}``): how long a failure
    #: must last before the alert fires. An alert not named keeps the shipped value;
    #: ``HandoverGeoSiteDown`` defaults to `geo.dead_after_s`
    rule_for_s: dict[
        Annotated[str, StringConstraints(pattern=r"^Handover[A-Za-z]+$")],
        Annotated[float, Field(gt=0, le=86400)],
    ] = Field(default_factory=dict)
    #: what each alert kind starts (`recovered` never starts anything)
    procedures: dict[AlertKind, AlertProcedure] = Field(
        default_factory=lambda: dict(DEFAULT_ALERT_PROCEDURES)
    )

    @model_validator(mode="after")
    def _procedures_fit(self) -> Alerts:
        if "recovered" in self.procedures:
            raise ValueError("procedures.recovered: a recovered alert never starts a procedure")
        for kind, procedure in self.procedures.items():
            # a site_down names a geo site, every other kind a host: each procedure takes one
            if (kind == "site_down") != (procedure == "geo-site-down"):
                raise ValueError(
                    f"procedures.{kind}: {procedure} cannot be started by a {kind} alert (a "
                    "site_down names a geo site and starts geo-site-down only; the other kinds "
                    "name a host and start emergency-move or switch)"
                )
        return self
