"""Command lines from argv: every word arrives verbatim (pure; the planners and the SSH adapter
both build commands with it, so a plan shows exactly what will run)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

_FORBIDDEN_IN_WORDS = ("\x00", "\n", "\r")
_CLIP = 200


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."


def shell_command(argv: Sequence[str]) -> str:
    """Build a POSIX shell command line in which every word arrives verbatim.

    Each word is quoted with :func:`shlex.quote`, so ``;``, ``$(...)``, quotes and spaces are
    data, never code.

    Args:
        argv: The program and its arguments.

    Returns:
        The command line.

    Raises:
        ValueError: If argv is empty or a string, or a word contains NUL, CR or LF (no name from
            a config or an alert legitimately does; refusing them keeps logs and shells sane).

    Example:
        >>> shell_command(["glite-transfer-channel-set", "-S", "Inactive", "CERN-CERN; rm -rf /"])
        "glite-transfer-channel-set -S Inactive 'CERN-CERN; rm -rf /'"
    """
    if isinstance(argv, str):
        raise ValueError(f"argv must be a sequence of words, not the string {_clip(argv)!r}")
    words = list(argv)
    if not words:
        raise ValueError("argv is empty: there is no command to run")
    for index, word in enumerate(words):
        if not isinstance(word, str):
            raise ValueError(f"argv[{index}] is {type(word).__name__}, not str")
        for bad in _FORBIDDEN_IN_WORDS:
            if bad in word:
                raise ValueError(
                    f"argv[{index}] {_clip(word)!r} contains {bad!r}; a word may not contain "
                    "NUL, CR or LF; check where this name came from"
                )
    return " ".join(shlex.quote(word) for word in words)
