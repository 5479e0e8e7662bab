"""How the lab says it cannot do what was asked."""

from __future__ import annotations


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""
