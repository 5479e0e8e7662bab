"""A lab host's FTS command, run by the host's command server (`infra.lab.cmdserver`).

The host's command wrappers run ``python -I -S cmdclient.py MODULE ARGS...``: an interpreter
without site packages starts in a fraction of the time a full one with the command's imports
does. This file hands its argv, environment, working directory and standard streams to the
server, waits for the command to end and ends the same way (exit code, or the same signal).
With no server to talk to, it runs ``python -m MODULE ARGS...`` itself.

Standard library only, and no import of the project: it runs before any path to it is set.
"""

# the C modules themselves: `socket`, `signal` and `json` import enum, re and more, which
# would double this interpreter's start
import _signal  # type: ignore[import-not-found]  # no stub: it is signal's C half
import _socket
import os
import sys

SOCKET_PATH = "/run/handover-lab/cmd.sock"
#: another socket (tests)
SOCKET_ENV = "HANDOVER_LAB_CMD_SOCKET"


def _run_here(module: str, args: list[str]) -> None:
    """No server: be the command, as the wrapper used to run it."""
    os.execv(sys.executable, [sys.executable, "-m", module, *args])  # noqa: S606


def request(module: str, args: list[str]) -> bytes:
    """What the server reads: NUL-separated ``v1``, the module, the working directory, the
    number of arguments, the arguments, then the environment as ``NAME=VALUE``."""
    words = [b"v1", os.fsencode(module), os.fsencode(os.getcwd()), str(len(args)).encode()]
    words += [os.fsencode(a) for a in args]
    words += [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in os.environ.items()]
    return b"\0".join(words)


def main() -> None:
    """Run the command through the host's server, or here without one."""
    if len(sys.argv) < 2:
        sys.stderr.write("usage: cmdclient.py MODULE [ARGS...]\n")
        sys.exit(2)
    module, args = sys.argv[1], sys.argv[2:]
    # a command interrupted by hand ends quietly, and its worker with it (the server sees
    # this end of the socket close)
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        sock.connect(os.environ.get(SOCKET_ENV) or SOCKET_PATH)
    except OSError:
        sock.close()
        _run_here(module, args)
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    try:
        sock.sendmsg([request(module, args)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        answer = sock.recv(65536).decode(errors="replace")
    except OSError:
        answer = ""
    kind, _, value = answer.partition(" ")
    if kind == "exit":
        sys.exit(int(value))
    if kind == "signal":
        sig = int(value)
        _signal.signal(sig, _signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)
    if kind == "error":
        sys.stderr.write(f"{module}: refused by the host's command server: {value}\n")
    else:
        # the server died with the command (the host crashed or rebooted under it)
        sys.stderr.write(f"{module}: the host's command server went away\n")
    sys.exit(1)


if __name__ == "__main__":
    main()
