"""Prefect Secret blocks as a source of the site's secrets (``{prefect_secret: BLOCK}``).

The site model (`config.site.secrets`) imports no Prefect; a process that may resolve such a
reference registers this module's reader first: the command line as it starts, and every flow
run as it loads its site (`flows.run_site.load_run_site`).
"""

from __future__ import annotations

from typing import Any, cast

from config.site import SecretError, read_secret_blocks_with


def read_secret_block(name: str) -> str:
    """The value of the Prefect Secret block called `name`.

    Args:
        name: the block's name.

    Returns:
        The value, as text.

    Raises:
        SecretError: there is no such block (the message says how to create it).
    """
    from prefect.blocks.system import Secret

    try:
        block = cast("Secret[Any]", Secret.load(name))
    except ValueError as exc:
        raise SecretError(
            f"secret from Prefect Secret block {name} does not exist; create it in the Prefect "
            "UI (Blocks > Secret) or with prefect.blocks.system.Secret(value=...).save(name)"
        ) from exc
    return str(block.get())


def use_prefect_secret_blocks() -> None:
    """Let this process resolve ``{prefect_secret: BLOCK}`` references (idempotent)."""
    read_secret_blocks_with(read_secret_block)
