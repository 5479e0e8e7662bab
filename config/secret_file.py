"""Reading a secret from a file, refusing a file that others could read or change.

The rule is OpenSSH's for private keys and its StrictModes: a secret file must belong to the
user handover runs as (or to root) and must give its group and others no access at all (mode
0600 or 0400). A link is followed and its target is what is checked (and named in the fix). The
checks are made on the file that was opened, not on its name, so a file swapped between the check
and the read is not read.

Example:
    >>> from pathlib import Path
    >>> read_secret_file(Path("/etc/handover/tsig.key"))  # doctest: +SKIP
    'c2VjcmV0...'
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat
from pathlib import Path


class SecretError(RuntimeError):
    """A secret reference could not be resolved; the message names the reference, never a value."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _access(mode: int) -> str:
    """Which of the group's and others' permissions `mode` grants, in words."""
    words = []
    for who, r, w, x in (
        ("its group", stat.S_IRGRP, stat.S_IWGRP, stat.S_IXGRP),
        ("others", stat.S_IROTH, stat.S_IWOTH, stat.S_IXOTH),
    ):
        can = [verb for bit, verb in ((r, "read"), (w, "write"), (x, "execute")) if mode & bit]
        if can:
            words.append(f"{who} may {' and '.join(can)} it")
    return "; ".join(words)


def read_secret_file(path: Path, label: str | None = None) -> str:
    """The secret in `path` (stripped), once the file is found private.

    Args:
        path: the file (absolute; a link is followed).
        label: how to name the file in errors (default: ``file PATH``).

    Returns:
        The file's text, without surrounding whitespace.

    Raises:
        SecretError: the file cannot be opened, is no regular file, belongs to another user
            than the one handover runs as (or root), or is open to its group or others; the
            message names the file, what is wrong and the command that fixes it.
    """
    label = label or f"file {path}"
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the reader
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(
            f"secret from {label} cannot be read ({exc.strerror}); check the path and its "
            "permissions"
        ) from exc
    try:
        st = os.fstat(fd)
        target = os.path.realpath(path)
        via = f" (a link to {target})" if target != os.path.abspath(path) else ""
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(
                f"secret from {label}{via} is not a regular file; point the reference at a file "
                "that holds the secret"
            )
        me = os.geteuid()
        wrong: list[str] = []
        fixes: list[str] = []
        if st.st_uid not in (me, 0):
            owners = f"{_user(me)} (who handover runs as)" + (" or root" if me != 0 else "")
            wrong.append(
                f"it belongs to {_user(st.st_uid)} (uid {st.st_uid}), not to {owners}, so "
                "that user can change it"
            )
            fixes.append(f"chown {shlex.quote(_user(me))} {shlex.quote(target)}")
        if st.st_mode & 0o077:
            wrong.append(f"{_access(st.st_mode)} (mode {stat.S_IMODE(st.st_mode):04o})")
            fixes.append(f"chmod 600 {shlex.quote(target)}")
        if wrong:
            as_root = " as root" if st.st_uid not in (me, 0) else ""
            raise SecretError(
                f"secret from {label}{via} is not private: {'; '.join(wrong)}; run "
                f"`{' && '.join(fixes)}`{as_root} (a secret file must be yours or root's and "
                "closed to everyone else, as OpenSSH requires of a private key)"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        return data.decode().strip()
    except UnicodeDecodeError as exc:
        raise SecretError(f"secret from {label}{via} is not UTF-8 text ({exc.reason})") from exc
