"""`handover gateway`: run the gateway for one site or several, over HTTP (or one site over
Slack's Socket Mode)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from config.loader import load_site
from config.site import SecretError, SecretRef, Site
from flows.seals import alert_seal_key, seal_key, site_alert_seal_key
from infra.gateway.decide import Decider
from infra.gateway.incidents import IncidentBook, Incidents
from infra.gateway.intake import AlertIntake
from infra.gateway.sites import AlertSecrets, SiteGateway, Sites, SitesError
from infra.gateway.starts import RunStarter


class GatewayError(RuntimeError):
    """The gateway cannot start; the message says what is missing."""


#: the shortest secret the gateway accepts (Slack's signing secrets have 32 characters)
MIN_SECRET_CHARS = 16


def require_secret(what: str, ref: SecretRef, min_chars: int = MIN_SECRET_CHARS) -> str:
    """A secret of the gateway, resolved now; an empty or short one stops the gateway.

    An empty secret would verify signatures made with an empty key: anyone could forge them.

    Raises:
        SecretError: the reference cannot be read.
        GatewayError: the secret is empty or shorter than `min_chars`; names the reference.
    """
    value = ref.resolve().get_secret_value()
    if len(value.strip()) < min_chars:
        raise GatewayError(
            f"{what} ({ref.describe()}) is {'empty' if not value.strip() else 'too short'}: "
            f"use a random secret of at least {min_chars} characters; the gateway does not "
            "start with it"
        )
    return value


def _group_members(site: Site) -> Any:
    from tasks.adapters.slack import slack_client

    def members(group: str) -> list[str]:
        resp = slack_client(site).usergroups_users_list(usergroup=group)
        return list(resp.get("users") or [])

    return members


def build(site_file: str) -> tuple[Site, Decider, str | None]:
    """The site, its decider and its Slack signing secret (resolved now, never logged)."""
    site = load_site(site_file)
    if site.slack is None and site.alerts is None:
        raise GatewayError(
            f"site {site.site} has neither a slack nor an alerts section: nothing to serve"
        )
    secret = None
    if site.slack is not None:
        try:
            secret = require_secret("slack.signing_secret", site.slack.signing_secret)
        except SecretError as exc:
            if site.alerts is None:
                raise GatewayError(f"the Slack signing secret: {exc}") from None
            # alerts still come in; approvals then go through the Prefect UI only
            logging.getLogger("handover.gateway").warning(
                "Slack interactions OFF (POST /slack/interactions answers 404): the Slack "
                "signing secret: %s",
                exc,
            )
    if site.slack is not None:
        try:
            require_secret("slack.bot_token", site.slack.bot_token, min_chars=8)
        except SecretError as exc:
            logging.getLogger("handover.gateway").warning(
                "no Slack bot token (replies and notes go to the runs' logs only): %s", exc
            )
    members = _group_members(site) if site.slack is not None else None
    key = seal_key(secret) if secret else None
    decider = Decider(
        site,
        group_members=members,
        seal_key=key,
        # to tell a run an alert started (its requester is the monitoring) from one whose
        # requester is only a name someone typed
        alert_key=site_alert_seal_key(site.alerts),
    )
    return site, decider, secret


RunsFrom = Literal["gateway", "automations"]


def build_intake(
    site: Site, decider: Decider, runs_from: RunsFrom = "gateway"
) -> tuple[AlertIntake, AlertSecrets] | None:
    """The alert intake and its resolved credentials (None when the site takes no alerts).

    `runs_from`: ``gateway`` creates a new incident's runs itself (`infra.gateway.starts`);
    ``automations`` leaves them to Prefect's automations (the event starts them).
    """
    cfg = site.alerts
    if cfg is None:
        return None

    def resolve(what: str, ref: SecretRef | None) -> str | None:
        if ref is None:
            return None
        try:
            return require_secret(what, ref)
        except SecretError as exc:
            raise GatewayError(f"{what}: {exc}") from None

    secrets = AlertSecrets(
        webhook=(resolve("alerts.webhook_secret", cfg.webhook_secret) or "").encode(),
        am_token=resolve(
            "alerts.alertmanager.bearer_token",
            cfg.alertmanager.bearer_token if cfg.alertmanager else None,
        ),
        am_password=resolve(
            "alerts.alertmanager.basic_auth.password",
            cfg.alertmanager.basic_auth.password
            if cfg.alertmanager and cfg.alertmanager.basic_auth
            else None,
        ),
    )
    post = None
    if site.slack is not None:
        from tasks.adapters.slack import Mrkdwn, post_text, slack_client

        try:
            client = slack_client(site)
        except SecretError as exc:
            logging.getLogger("handover.gateway").warning(
                "attached alerts are noted in the runs' logs only (no Slack): %s", exc
            )
        else:

            def post(channel: str, thread_ts: str, text: Mrkdwn) -> None:
                post_text(client, channel, thread_ts, text)

    starter = RunStarter(site) if runs_from == "gateway" else None
    book: IncidentBook = Incidents(cfg.dedup_window_s)
    store_url = resolve("alerts.incident_store", cfg.incident_store)
    if store_url:
        from infra.gateway.shared_incidents import IncidentStoreError, SharedIncidents

        try:
            book = SharedIncidents(store_url, cfg.dedup_window_s)
        except IncidentStoreError as exc:
            raise GatewayError(str(exc)) from None
    intake = AlertIntake(
        site,
        book,
        decider.record,
        post,
        starter,
        alert_key=alert_seal_key(secrets.webhook.decode()),
    )
    return intake, secrets


def build_sites(site_files: str | Sequence[str], runs_from: RunsFrom = "gateway") -> Sites:
    """Every site's gateway (its decider, Slack signing secret, alert intake and credentials),
    each resolved now.

    Raises:
        GatewayError: a site cannot be served (a secret missing), or the sites cannot be served
            together (the same site and service twice, shared alert credentials).
    """
    gateways = []
    for f in [site_files] if isinstance(site_files, str) else site_files:
        site, decider, secret = build(f)
        built = build_intake(site, decider, runs_from)
        intake, alert_secrets = built if built else (None, None)
        gateways.append(SiteGateway(site, secret, decider, intake, alert_secrets))
    try:
        return Sites(gateways)
    except SitesError as exc:
        raise GatewayError(str(exc)) from None


def serve_http(
    site_files: str | Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8787,
    runs_from: RunsFrom = "gateway",
) -> None:
    """Serve `POST /slack/interactions`, `POST /alerts/*` and `GET /healthz` for every site
    given until interrupted; each alert goes to the site it names (`infra.gateway.sites`)."""
    import uvicorn

    from infra.gateway.app import create_sites_app

    sites = build_sites(site_files, runs_from)
    _log_to_stderr()
    uvicorn.run(create_sites_app(sites), host=host, port=port, log_level="warning")


def serve_socket_mode(site_file: str) -> None:
    """Receive interactions over Slack's Socket Mode (no inbound HTTP) until interrupted."""
    import threading

    from infra.gateway.socket_mode import socket_mode_client

    site, decider, _ = build(site_file)
    if site.slack is None:
        raise GatewayError(f"site {site.site} has no slack section: Socket Mode needs Slack")
    if site.slack.app_token is None:
        raise GatewayError("Socket Mode needs slack.app_token (an xapp- token) in the site file")
    try:
        app_token = site.slack.app_token.resolve().get_secret_value()
    except SecretError as exc:
        raise GatewayError(f"the Slack app token: {exc}") from None
    _log_to_stderr()
    client = socket_mode_client(site, app_token, decider)
    client.connect()
    threading.Event().wait()


def _log_to_stderr() -> None:
    """The gateway's own lines (the audit log, one JSON line per request, at INFO) on stderr,
    whatever logging Prefect has set up for the root logger (WARNING)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("handover",):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.handlers = [handler]
        logger.propagate = False
