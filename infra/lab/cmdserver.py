"""A lab host's command server: the host's FTS commands, forked from one warm process.

Every FTS command on a lab host (``glite-transfer-channel-list``, ``service transfer-agents``,
``fts-frontend status``, ...) is a Python module. Run as ``python -m MODULE``, each paid for an
interpreter start and its imports (the PostgreSQL driver alone is a third of it): about 130 ms
of CPU, for a command that does a few ms of work, and the suite runs several a second on each
lab. Started by the host's init like sshd, this server imports those modules once; each command
then reaches it through a small client (`infra.lab.cmdclient`, an interpreter without site
packages) that hands over its argv, environment, working directory and its standard streams
(the file descriptors themselves, over ``SCM_RIGHTS``). The server forks a worker that takes
them on and runs the module as ``__main__``, exactly what ``python -m`` would, and answers with
how the worker ended; the client exits the same way.

What stays as it was: the command's streams are the ones sshd gave the client, so output,
stdin and a closed pipe behave the same; its processes live in the host's namespaces. A worker
whose client dies first (killed, or its session gone) is killed with its process group, as
the command itself would have been; the agents it started run in their own sessions and are
left alone. With no server listening (not started yet, or dead), the client runs the module
itself.

Wire format (``SOCK_SEQPACKET``): the client sends one message (`infra.lab.cmdclient.request`:
NUL-separated words) with its fds 0-2 attached; the server answers ``exit N`` or ``signal N``
once the worker has ended, or ``error WHY`` at once for a request it refuses.
"""

from __future__ import annotations

import array
import contextlib
import importlib
import io
import os
import random
import runpy
import selectors
import signal
import socket
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

from setproctitle import setproctitle

from infra.lab import runtime

#: where a lab host's server listens (in the host's own /run, a tmpfs per boot)
SOCKET_PATH = Path("/run/handover-lab/cmd.sock")
#: the modules commands may run, imported once at the server's start
MODULES = (
    "infra.lab.hostcmd",
    "infra.lab.frontend",
    "infra.lab.frontend_ha",
    "infra.lab.software",
)
#: imported too: what those modules import lazily when a command needs it
PRELOAD = ("pg8000.native", "infra.lab.db", "infra.lab.agent")
MAX_MESSAGE = 256 * 1024


@dataclass(frozen=True)
class Request:
    """One command to run (`infra.lab.cmdclient.request` writes it)."""

    module: str
    argv: list[str]
    cwd: str
    env: dict[str, str]

    @classmethod
    def parse(cls, msg: bytes) -> Request:
        """Read a request; ValueError for anything else."""
        words = [os.fsdecode(w) for w in msg.split(b"\0")]
        if len(words) < 4 or words[0] != "v1" or not words[3].isdigit():
            raise ValueError("not a v1 request")
        count = int(words[3])
        argv, rest = words[4 : 4 + count], words[4 + count :]
        if len(argv) != count or any("=" not in w for w in rest):
            raise ValueError("a malformed v1 request")
        env = dict(w.split("=", 1) for w in rest)
        return cls(module=words[1], argv=argv, cwd=words[2], env=env)


def _streams() -> None:
    """New sys.stdin/stdout/stderr on fds 0-2, as the interpreter makes them at start."""
    tty = os.isatty(1)
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        open(1, "wb", closefd=False), encoding="utf-8", line_buffering=tty
    )
    sys.stderr = io.TextIOWrapper(
        open(2, "wb", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_worker(request: Request, fds: list[int]) -> int:
    """In the forked worker: take on the client's streams, environment and directory, and run
    the module as ``__main__``. Returns the exit code."""
    os.setpgid(0, 0)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    _streams()
    os.environ.clear()
    os.environ.update(request.env)
    with contextlib.suppress(OSError):
        os.chdir(request.cwd)
    sys.argv = ["-m", *request.argv]
    # what `ps` showed when the command was an interpreter of its own
    setproctitle(" ".join([sys.executable, "-m", request.module, *request.argv]))
    random.seed()  # not the server's sequence, nor another worker's
    # the agent's modules are imported here: `service transfer-agents start` forks them
    runtime.FORK_AGENTS = True
    # the module is imported already (that is the point); running it again as __main__ is
    # what `python -m` does, without the warning runpy gives for it
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
    try:
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as e:
        return _exit_code(e)
    except KeyboardInterrupt:
        return 130
    except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught error
        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


class Server:
    """The accept loop: one forked worker per request, answered when it ends."""

    def __init__(self, path: Path, modules: tuple[str, ...] = MODULES) -> None:
        self.path = path
        self.modules = modules
        self.sel = selectors.DefaultSelector()
        #: client socket -> (worker pid, its pidfd)
        self.running: dict[socket.socket, tuple[int, int]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(tmp))
        # only the server's own user (root) may connect: a worker runs the client's command as
        # the server's user, so another user's client (an agent's) runs its commands itself
        os.chmod(tmp, 0o600)
        self.listener.listen(128)
        # clients find the socket only once it accepts
        os.replace(tmp, path)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")

    def serve_forever(self) -> None:
        """Serve until killed (with the host)."""
        while True:
            for key, _ in self.sel.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "client":
                    self._client_gone(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._worker_ended(key.data)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            conn.settimeout(5.0)
            msg, anc, _, _ = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(3 * 4))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(data[: len(data) - (len(data) % got.itemsize)])
                    fds.extend(got)
            request = Request.parse(msg)
            if request.module not in self.modules:
                raise ValueError(f"{request.module} is not one of this host's commands")
            if len(fds) != 3:
                raise ValueError(f"{len(fds)} file descriptors sent, not 3")
        except (OSError, ValueError) as e:
            with contextlib.suppress(OSError):
                conn.send(f"error {e}".encode())
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                self.listener.close()
                for other in self.running:
                    other.close()
                conn.close()
                code = _run_worker(request, fds)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.running[conn] = (pid, pidfd)
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, "client")
        self.sel.register(pidfd, selectors.EVENT_READ, conn)

    def _forget(self, conn: socket.socket) -> tuple[int, int]:
        pid, pidfd = self.running.pop(conn)
        self.sel.unregister(conn)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        return pid, pidfd

    def _worker_ended(self, conn: socket.socket) -> None:
        pid, _ = self._forget(conn)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            answer = f"signal {os.WTERMSIG(status)}"
        else:
            answer = f"exit {os.WEXITSTATUS(status)}"
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.send(answer.encode())
        conn.close()

    def _client_gone(self, conn: socket.socket) -> None:
        """The client sent something or hung up: it only ever hangs up (it died), so its
        command dies too."""
        with contextlib.suppress(OSError):
            if conn.recv(1):
                return
        pid, _ = self._forget(conn)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.lab.cmdserver [SOCKET [MODULE...]]``: import the commands (the lab's
    FTS commands unless modules are named), then serve."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else SOCKET_PATH
    modules = tuple(args[1:]) or MODULES
    for name in (*PRELOAD, *modules):
        importlib.import_module(name)
    # setproctitle finds the memory it may write the title to (argv and the environment after
    # it) at its first call; made here, while that memory is as exec left it, its workers (and
    # the agents they fork) can take titles: a worker's environment is replaced, after which it
    # could not. The title stays the command line it was started with.
    setproctitle(" ".join(sys.orig_argv))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    Server(path, modules).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
