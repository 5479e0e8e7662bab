"""Slack: where the procedures post, who may approve, and the credentials (by reference)."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    Field,
    StringConstraints,
)

from config.site.base import SLACK_USER_RE, SiteModel
from config.site.secrets import SecretRef


class Slack(SiteModel):
    """Where the procedures post, who may approve, and the credentials (by reference)."""

    #: the channel each run's thread is posted in
    channel: Annotated[str, StringConstraints(pattern=r"^[#A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
    #: the Slack user ids who may approve (or `approver_group`)
    approvers: list[Annotated[str, StringConstraints(pattern=SLACK_USER_RE)]] = Field(
        default_factory=list
    )
    #: a Slack user group whose members may approve
    approver_group: Annotated[str, StringConstraints(pattern=r"^S[A-Z0-9]{2,20}$")] | None = None
    #: a run needs two distinct approvers, unless the monitoring started it (its alert sealed by
    #: the gateway)
    two_person_rule: bool = False
    #: who the requesters are in Slack: an OS login (what `handover run` records as the
    #: requester) to its Slack user ID. Under the two-person rule, a run whose requester is
    #: listed here may not be approved by that user; any other run needs two approvers.
    operators: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")],
        Annotated[str, StringConstraints(pattern=SLACK_USER_RE)],
    ] = Field(default_factory=dict)
    #: the bot's token (a reference, never the value)
    bot_token: SecretRef
    #: the secret Slack signs its requests with; the gateway refuses a request without a valid
    #: signature
    signing_secret: SecretRef
    #: the app-level token for Socket Mode (`handover gateway --socket-mode`)
    app_token: SecretRef | None = None
