"""`handover gateway`: run the gateway for a site, over HTTP or Slack's Socket Mode."""

from __future__ import annotations

import logging
from typing import Any

from config.loader import load_site
from config.site import SecretError, Site
from infra.gateway.decide import Decider


class GatewayError(RuntimeError):
    """The gateway cannot start; the message says what is missing."""


def _group_members(site: Site) -> Any:
    from tasks.slack import slack_client

    def members(group: str) -> list[str]:
        resp = slack_client(site).usergroups_users_list(usergroup=group)
        return list(resp.get("users") or [])

    return members


def build(site_file: str) -> tuple[Site, Decider, str]:
    """The site, its decider and its signing secret (resolved now, never logged)."""
    site = load_site(site_file)
    if site.slack is None:
        raise GatewayError(f"site {site.site} has no slack section: nothing to approve from")
    try:
        secret = site.slack.signing_secret.resolve().get_secret_value()
    except SecretError as exc:
        raise GatewayError(f"the Slack signing secret: {exc}") from None
    return site, Decider(site, group_members=_group_members(site)), secret


def serve_http(site_file: str, host: str = "127.0.0.1", port: int = 8787) -> None:
    """Serve `POST /slack/interactions` and `GET /healthz` until interrupted."""
    import uvicorn

    from infra.gateway.app import create_app

    site, decider, secret = build(site_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(site, secret, decider), host=host, port=port, log_level="warning")


def serve_socket_mode(site_file: str) -> None:
    """Receive interactions over Slack's Socket Mode (no inbound HTTP) until interrupted."""
    import threading

    from infra.gateway.socket_mode import socket_mode_client

    site, decider, _ = build(site_file)
    assert site.slack is not None
    if site.slack.app_token is None:
        raise GatewayError("Socket Mode needs slack.app_token (an xapp- token) in the site file")
    try:
        app_token = site.slack.app_token.resolve().get_secret_value()
    except SecretError as exc:
        raise GatewayError(f"the Slack app token: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    client = socket_mode_client(site, app_token, decider)
    client.connect()
    threading.Event().wait()
