"""Words the plans, their verdicts and the reports share (pure)."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``count(1, "agent")`` -> ``"1 agent"``; ``count(3, "agent")`` -> ``"3 agents"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
