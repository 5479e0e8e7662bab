"""A lab host's command server and its client (`infra.lab.cmdserver`, `infra.lab.cmdclient`),
as local processes: the command runs in a worker forked by the server, with the client's
argv, environment, directory and streams, and ends the way the client ends. The lab tests run
every host command through them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.lab import cmdclient

REPO = Path(__file__).resolve().parent.parent


def client(sock: Path, *args: str, **kw: object) -> subprocess.Popen[str]:
    """The client as a host's wrapper runs it (no site packages), with `sock` as its server."""
    env = {"PATH": os.environ["PATH"], "PROBE_VALUE": "é v", "HANDOVER_LAB_CMD_SOCKET": str(sock)}
    return subprocess.Popen(
        [sys.executable, "-I", "-S", cmdclient.__file__, "tests.cmd_probe", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    sock = tmp_path / "cmd.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.lab.cmdserver", str(sock), "tests.cmd_probe"], cwd=REPO
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, "the command server exited at start"
        assert time.monotonic() < deadline, "the command server did not listen within 30 s"
        time.sleep(0.05)
    yield sock, proc
    proc.kill()
    proc.wait(timeout=10)


def test_the_command_runs_in_a_worker_with_the_clients_argv_env_cwd_and_streams(
    server: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    sock, srv = server
    c = client(sock, "exit", "7", cwd=tmp_path)
    out, err = c.communicate("the input", timeout=30)
    assert c.returncode == 7
    seen = json.loads(out)
    assert seen["ppid"] == srv.pid, "not run by the server's worker"
    assert seen["argv"] == ["exit", "7"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"] == "é v"
    assert seen["stdin"] == "the input"
    assert err == "to stderr\n"


def test_a_worker_killed_by_a_signal_kills_its_client_the_same_way(
    server: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    c = client(server[0], "signal", str(int(signal.SIGTERM)))
    c.communicate("", timeout=30)
    assert c.returncode == -signal.SIGTERM


def test_a_client_that_dies_takes_its_command_with_it(
    server: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    c = client(server[0], "sleep", "60")
    assert c.stdout is not None
    worker = json.loads(c.stdout.readline())["pid"]
    c.kill()
    c.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists():
        assert time.monotonic() < deadline, "the worker outlived its client by 10 s"
        time.sleep(0.05)
    # the server goes on serving
    again = client(server[0], "exit", "0")
    again.communicate("", timeout=30)
    assert again.returncode == 0


def test_a_module_the_server_does_not_serve_is_refused(
    server: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    env = {"PATH": os.environ["PATH"], "HANDOVER_LAB_CMD_SOCKET": str(server[0])}
    done = subprocess.run(
        [sys.executable, "-I", "-S", cmdclient.__file__, "os", "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "refused by the host's command server" in done.stderr


def test_without_a_server_the_client_runs_the_command_itself(tmp_path: Path) -> None:
    c = client(tmp_path / "nobody.sock", "exit", "3", cwd=REPO)
    out, _ = c.communicate("x", timeout=60)
    assert c.returncode == 3
    assert json.loads(out)["ppid"] != c.pid and json.loads(out)["pid"] == c.pid


@pytest.mark.lab
def test_only_the_servers_user_may_connect() -> None:
    """A worker runs the client's command as the server's user (root on a lab host): another
    user's client (an agent's) is refused at connect, whatever the umask the server started
    with, and runs its command itself. Root (the probe's parent) still connects."""
    import socket
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="handover-cmdsrv-"))
    where.chmod(0o755)  # reachable by anyone: the socket's own mode is what refuses
    sock = where / "cmd.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.lab.cmdserver", str(sock), "tests.cmd_probe"],
        cwd=REPO,
        preexec_fn=lambda: os.umask(0),  # the most permissive start
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.05)
        child = os.fork()
        if child == 0:  # the probe: become nobody, then try to connect
            code = 2
            try:
                os.setgid(65534)
                os.setuid(65534)
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                probe.connect(str(sock))
                code = 0
            except PermissionError:
                code = 13
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 13, "another user connected"
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as root:
            root.connect(str(sock))
    finally:
        proc.kill()
        proc.wait(timeout=10)
        sock.unlink(missing_ok=True)
        where.rmdir()
