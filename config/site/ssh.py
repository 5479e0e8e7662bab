"""How handover logs in to the site's hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    Field,
    StringConstraints,
)

from config.site.base import SiteModel


class SshConfig(SiteModel):
    """How handover logs in to hosts. Host keys are checked against `known_hosts`, never added."""

    #: the account handover logs in as (it must be allowed to run the command profile)
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    #: the private key handover logs in with
    key_file: Path
    #: the hosts' keys: an unknown or changed host key is refused, never added
    known_hosts: Path
    #: how long a connection (and its login) may take
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: how long the emergency move's first probe waits for a failed host's SSH port to answer
    #: (accept or refuse) before taking it for down: on a network that answers a connect in
    #: milliseconds, a second is ample, and every second here is a second of the move
    probe_timeout_s: float = Field(default=1.0, gt=0, le=30)
    #: how long one remote command may run before it is reported as timed out
    command_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: how many hosts are read or acted on at once
    parallelism: int = Field(default=8, ge=1, le=256)
