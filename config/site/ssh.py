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

    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    key_file: Path
    known_hosts: Path
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    command_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    parallelism: int = Field(default=8, ge=1, le=256)
