"""Files only their owner may read: handover's state and secrets, checked as OpenSSH checks keys.

Two kinds of files, two rules:

* **Secret files an operator names** (`{file: PATH}` in a site file, `--db-url-file`,
  `--token-file`): read with `read_secret_file`. As OpenSSH's rule for private keys: the file
  belongs to the user handover runs as (or to root) and gives its group and others no access at
  all (mode 0600 or 0400). A link is followed and its target is what is checked (and named in
  the fix). The checks are made on the file that was opened, not on its name, so a file swapped
  between the check and the read is not read.
* **handover's own state** (the Prefect server's home): a private directory and the files in
  it, below.

A file that holds a secret (the Prefect API's auth string, a password, a key) or that a process
of handover trusts (a PID it will signal, a logging configuration Prefect loads) is only as safe
as the directory it lives in: whoever can write that directory can replace the file, and
whoever created the directory first owns it. So, before a file is read or written here:

* the directory holding it is a real directory (not a link), owned by this process's user and
  open to nobody else (no group or other permission bits); every directory above it is owned by
  root or this user and writable by nobody else, unless it is sticky (``/tmp``, ``/var/tmp``:
  there only an entry's owner may rename or remove it);
* the file is a regular file (not a link: it is opened with ``O_NOFOLLOW``), owned by this user,
  with no group or other permission bits.

Anything else is refused with `UnsafePathError` (`SecretError` for a secret file), whose message
says what is wrong and the exact command that fixes it; nothing is changed on the operator's
behalf.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> home = ensure_private_dir(Path(tempfile.mkdtemp()) / "state")
    >>> write_private_text(home / "token", "s3cret")
    >>> read_private_text(home / "token")
    's3cret'
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path


class UnsafePathError(PermissionError):
    """A private file or directory is not private; the message says why and the fix."""


class SecretError(RuntimeError):
    """A secret reference could not be resolved; the message names the reference, never a value."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _me() -> int:
    return os.geteuid()


def _check_owner_and_mode(path: Path, st: os.stat_result, kind: str, fix_mode: str) -> None:
    me = _me()
    if st.st_uid != me:
        raise UnsafePathError(
            f"{path}: this {kind} belongs to {_user(st.st_uid)}, not to {_user(me)} who runs "
            f"handover; another user may have made it to read or replace what handover keeps "
            f"there. Check it, then remove it or take it over: chown {_user(me)} {path}"
        )
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise UnsafePathError(
            f"{path}: this {kind} is mode {stat.S_IMODE(st.st_mode):04o}: other users may "
            f"{'read or change it' if kind == 'file' else 'look into it'}; "
            f"chmod {fix_mode} {path}"
        )


def check_ancestors(path: Path) -> None:
    """Every directory above `path` is owned by root or this user and writable by nobody else
    (a sticky directory, such as /var/tmp, may be).

    Raises:
        UnsafePathError: one is not; the message names it and the fix.
    """
    me = _me()
    for parent in Path(os.path.abspath(path)).parents:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        if st.st_uid not in (0, me):
            raise UnsafePathError(
                f"{path}: the directory {parent} above it belongs to {_user(st.st_uid)}, who "
                f"could replace what handover keeps below it; keep handover's state under "
                f"directories owned by root or {_user(me)}"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise UnsafePathError(
                f"{path}: the directory {parent} above it is mode {mode:04o}: other users may "
                f"replace what handover keeps below it; chmod go-w {parent}"
            )


def check_private_dir(path: Path) -> None:
    """`path` is a directory of this user's, open to nobody else, under safe directories.

    Raises:
        UnsafePathError: it is not (or is missing); the message says why and the fix.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UnsafePathError(f"{path}: no such directory") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{path}: is a symbolic link; handover keeps its state in a real directory: "
            f"rm {path} (the link only)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path}: is not a directory")
    _check_owner_and_mode(path, st, "directory", "700")
    check_ancestors(path)


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and any missing directory above it) with mode 0700, then check it
    (`check_private_dir`). Directories that exist already are checked, never changed.

    Returns:
        The path.

    Raises:
        UnsafePathError: it (or a directory above it) is not private; the message has the fix.
    """
    check_ancestors(path)  # before anything is made below an unsafe directory
    missing: list[Path] = []
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    old = os.umask(0o077)
    try:
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(d, 0o700)
    finally:
        os.umask(old)
    check_private_dir(path)
    return path


def _check_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path}: is not a regular file; remove it: rm {path}")
    _check_owner_and_mode(path, st, "file", "600")


def _open_checked(path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(
                f"{path}: is a symbolic link; handover never follows one there: rm {path}"
            ) from None
        raise exc
    try:
        _check_file(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_text(path: Path) -> str:
    """The text of a private file (`path` checked in its private directory).

    Raises:
        FileNotFoundError: there is no such file.
        UnsafePathError: the file or its directory is not private; the message has the fix.
    """
    check_private_dir(path.parent)
    fd = _open_checked(path, os.O_RDONLY)
    with os.fdopen(fd) as f:
        return f.read()


def write_private_text(path: Path, text: str) -> None:
    """Write a private file (mode 0600, replacing its content) in its private directory.

    Raises:
        UnsafePathError: the file exists and is not private, or its directory is not; the
            message has the fix.
    """
    check_private_dir(path.parent)
    fd = _open_checked(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def open_private_append(path: Path) -> int:
    """A file descriptor appending to a private file (a log), made 0600 if missing.

    Raises:
        UnsafePathError: the file exists and is not private, or its directory is not.
    """
    check_private_dir(path.parent)
    return _open_checked(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a WAL file)
                yield p, os.lstat(p)


def check_private_tree(root: Path) -> None:
    """`root` is a private directory and everything below it is this user's, open to nobody
    else, with no symbolic link.

    Raises:
        UnsafePathError: the first entry that is not, with the fix for the whole tree.
    """
    check_private_dir(root)
    me = _me()
    for p, st in _walk(root):
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(
                f"{p}: is a symbolic link in handover's private directory {root}; nothing there "
                f"may point elsewhere: rm {p}"
            )
        if st.st_uid != me:
            raise UnsafePathError(
                f"{p}: belongs to {_user(st.st_uid)}, in handover's private directory {root}; "
                f"check it, then: chown -R {_user(me)} {root}"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UnsafePathError(
                f"{p}: mode {stat.S_IMODE(st.st_mode):04o}, in handover's private directory "
                f"{root}; chmod -R go= {root}"
            )


# --- secret files an operator names ------------------------------------------------------


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
