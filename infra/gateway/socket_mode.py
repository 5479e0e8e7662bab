"""Slack's Socket Mode as the gateway's transport: for sites whose gateway cannot receive inbound
HTTP. The envelope is authenticated by the app token's WebSocket; after the acknowledgement, the
decision takes the same path as over HTTP (`Decider.decide`)."""

from __future__ import annotations

from typing import Any

from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from config.site import Site
from infra.gateway.decide import Decider
from tasks.adapters.slack import reply_ephemeral


def make_listener(decider: Decider) -> Any:
    """The Socket Mode listener: acknowledge at once, then decide."""

    def listener(client: Any, req: SocketModeRequest) -> None:
        if req.type != "interactive":
            return
        client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        payload = req.payload or {}
        actions = payload.get("actions") or []
        user = payload.get("user") or {}
        if payload.get("type") != "block_actions" or len(actions) != 1 or "id" not in user:
            decider.record(
                source="Slack socket mode", result="refused", reason="malformed interaction"
            )
            return
        decision = decider.decide(
            user_id=str(user["id"]),
            user_name=str(user.get("username") or ""),
            action_id=str(actions[0].get("action_id", "")),
            value=str(actions[0].get("value", "")),
            source="Slack",
        )
        if not decision.resumed and isinstance(payload.get("response_url"), str):
            reply_ephemeral(payload["response_url"], decision.message)

    return listener


def socket_mode_client(site: Site, app_token: str, decider: Decider) -> SocketModeClient:
    """A Socket Mode client with the gateway's listener registered."""
    from tasks.adapters.slack import slack_client

    client = SocketModeClient(app_token=app_token, web_client=slack_client(site))
    client.socket_mode_request_listeners.append(make_listener(decider))
    return client
