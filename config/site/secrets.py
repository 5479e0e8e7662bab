"""Secret references (`{env: NAME}`, `{file: PATH}`, `{prefect_secret: BLOCK}`), resolved only
when the secret is used."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import (
    SecretStr,
    StringConstraints,
    model_validator,
)

from config.private_files import SecretError as SecretError  # re-exported: callers import it here
from config.private_files import read_secret_file
from config.site.base import ENV_NAME_RE, SiteModel

#: reads the value of a Prefect Secret block by its name; raises `SecretError`, saying how to
#: create the block, when there is none
SecretBlockReader = Callable[[str], str]

_block_reader: SecretBlockReader | None = None


def read_secret_blocks_with(reader: SecretBlockReader | None) -> None:
    """Say how this process reads ``{prefect_secret: BLOCK}`` references (None: it reads none).

    The site model imports no Prefect: the layer that talks to Prefect registers its reader
    (`tasks.secret_blocks.use_prefect_secret_blocks`, called by the command line and by every
    flow run as it loads its site).

    Args:
        reader: the block reader, or None to forget the one registered.
    """
    global _block_reader  # one reader per process, registered as it starts
    _block_reader = reader


class SecretRef(SiteModel):
    """A reference to a secret. Exactly one of `env`, `file` or `prefect_secret` is set.

    A `file` must belong to the user handover runs as (or root) and be closed to its group and
    others (``chmod 600``), as OpenSSH requires of a private key; it is checked when read.

    Example:
        ``password: {env: FTS_DB_PASSWORD}`` or ``password: {file: /etc/handover/db-password}``.
    """

    #: the secret is this environment variable's value
    env: Annotated[str, StringConstraints(pattern=ENV_NAME_RE)] | None = None
    #: the secret is this file's content (owned by handover's user or root, mode 600)
    file: Path | None = None
    #: the secret is this Prefect Secret block's value
    prefect_secret: (
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")] | None
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: object) -> object:
        if isinstance(data, str | int | float):
            raise ValueError(
                "inline secrets are not allowed; reference it instead: "
                "{env: VARIABLE}, {file: /absolute/path} or {prefect_secret: block-name}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("env", "file", "prefect_secret") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a secret reference needs exactly one of env, file or prefect_secret "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.file is not None and not self.file.is_absolute():
            raise ValueError(f"secret file path must be absolute, got {self.file}")
        return self

    def describe(self) -> str:
        """Say where the secret comes from, without its value."""
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.file}"
        return f"Prefect Secret block {self.prefect_secret}"

    def resolve(self) -> SecretStr:
        """Read the secret now.

        Returns:
            The secret, wrapped so that printing it shows ``**********``.

        Raises:
            SecretError: the variable is unset, the file unreadable or not private (see
                `config.private_files.read_secret_file`: yours or root's, mode 0600), or the
                block missing (or this process reads no blocks: `read_secret_blocks_with`).
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise SecretError(f"secret from {self.describe()} is not set; export it first")
            return SecretStr(value)
        if self.file is not None:
            return SecretStr(read_secret_file(self.file, self.describe()))
        reader = _block_reader
        if reader is None:
            raise SecretError(
                f"secret from {self.describe()} cannot be read in this process, which reads no "
                "Prefect blocks; resolve it in a handover command or a flow run (they read "
                "blocks: `tasks.secret_blocks`), or reference it by {env: ...} or {file: ...}"
            )
        return SecretStr(reader(str(self.prefect_secret)))


def secret_refs(model: object, path: str = "") -> list[tuple[str, SecretRef]]:
    """Every secret reference in a model, with its field path (`slack.bot_token`), in field order.

    Args:
        model: a site model (or any pydantic model, list or mapping of them).
        path: the path of `model` itself (empty for the root).

    Returns:
        (path, reference) pairs; nothing is resolved.
    """
    from pydantic import BaseModel

    if isinstance(model, SecretRef):
        return [(path, model)]
    found: list[tuple[str, SecretRef]] = []
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            found += secret_refs(getattr(model, name), f"{path}.{name}" if path else name)
    elif isinstance(model, list | tuple):
        for i, item in enumerate(model):
            found += secret_refs(item, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, item in model.items():
            found += secret_refs(item, f"{path}.{key}" if path else str(key))
    return found
