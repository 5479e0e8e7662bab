"""Tests of tasks.adapters.ssh against real OpenSSH servers on loopback addresses (no mocks).

Needs root and openssh-server (/usr/sbin/sshd, ssh-keygen). Without them the tests are skipped,
except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import getpass
import os
import pickle
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.ports import free_port
from tasks.adapters.ssh import (
    CommandFailed,
    CommandResult,
    CommandTimeout,
    HostKeyError,
    PermanentSshError,
    SshEndpoint,
    SshError,
    SshPool,
    SshSettings,
    TransientSshError,
    shell_command,
)
from tests.conftest import require

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


# ------------------------------------------------------------------------------------------
# The lab: real sshd processes
# ------------------------------------------------------------------------------------------


def _require_sshd() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (sshd must run as root; run the tests as root)")
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        missing.append("/usr/sbin/sshd and ssh-keygen (apt-get install openssh-server)")
    require(not missing, "tests/test_ssh.py needs " + " and ".join(missing), need="lab")


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def _descendants(pid: int) -> list[int]:
    """PIDs of all descendants of pid (scanning /proc; children first listed last)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _kill_from_pidfile(pidfile: Path) -> None:
    """Kill a remote command the test left running (its PID was written by the command)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    _signal_all([pid], signal.SIGKILL)


@dataclass
class Server:
    name: str
    address: str
    port: int
    host_key_pub: str  # "ssh-ed25519 AAAA... comment"
    host_key_file: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> SshEndpoint:
        return SshEndpoint(host=self.name, address=self.address, port=self.port)

    def known_hosts_line(self) -> str:
        key_type, key_data = self.host_key_pub.split()[:2]
        return f"[{self.address}]:{self.port} {key_type} {key_data}\n"

    def session_pids(self) -> list[int]:
        """sshd's per-connection processes and the commands they run."""
        return _descendants(self.process.pid)

    def sshd_session_pids(self) -> list[int]:
        """Only sshd's per-connection processes (not the commands)."""
        return [pid for pid in self.session_pids() if _comm(pid) == "sshd"]


def _start_sshd(base: Path, name: str, address: str, authorized_keys: Path) -> Server:
    directory = base / name
    directory.mkdir()
    host_key = _keygen(directory / "ssh_host_ed25519_key")
    port = free_port(address)
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                f"PidFile {directory / 'sshd.pid'}",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = directory / "sshd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"sshd for {name} exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection((address, port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() >= deadline:
                _stop_sshd(process)
                pytest.fail(
                    f"sshd for {name} did not listen on {address}:{port} within "
                    f"{START_TIMEOUT_S} s: {log.read_text()}"
                )
            time.sleep(0.02)
    return Server(
        name=name,
        address=address,
        port=port,
        host_key_pub=(directory / "ssh_host_ed25519_key.pub").read_text().strip(),
        host_key_file=host_key,
        process=process,
        log=log,
    )


def _stop_sshd(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    leftovers = _descendants(process.pid)  # session processes and their commands
    _signal_all(leftovers, signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)
    _signal_all(leftovers, signal.SIGKILL)


@dataclass
class Lab:
    base: Path
    client_key: Path
    wrong_key: Path
    known_hosts: Path
    a: Server
    b: Server
    dead: SshEndpoint

    def settings(self, **changes: object) -> SshSettings:
        values: dict[str, object] = {
            "user": getpass.getuser(),
            "key_file": self.client_key,
            "known_hosts": self.known_hosts,
            "connect_timeout": 2.0,
            "command_timeout": 10.0,
        }
        values.update(changes)
        return SshSettings.model_validate(values)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    _require_sshd()
    base = tmp_path_factory.mktemp("ssh-lab")
    client_key = _keygen(base / "id_ed25519")
    wrong_key = _keygen(base / "id_wrong")
    authorized_keys = base / "authorized_keys"
    authorized_keys.write_text((base / "id_ed25519.pub").read_text())
    servers: list[Server] = []
    try:
        servers.append(_start_sshd(base, "fts-a", "127.0.77.1", authorized_keys))
        servers.append(_start_sshd(base, "fts-b", "127.0.77.2", authorized_keys))
        known_hosts = base / "known_hosts"
        known_hosts.write_text("".join(server.known_hosts_line() for server in servers))
        dead_address = "127.0.77.3"
        dead = SshEndpoint(host="fts-dead", address=dead_address, port=free_port(dead_address))
        yield Lab(base, client_key, wrong_key, known_hosts, servers[0], servers[1], dead)
    finally:
        for server in servers:
            _stop_sshd(server.process)


@pytest.fixture
def pool(lab: Lab) -> Iterator[SshPool]:
    with SshPool(lab.settings()) as ssh_pool:
        yield ssh_pool


# ------------------------------------------------------------------------------------------
# shell_command (pure)
# ------------------------------------------------------------------------------------------


def test_shell_command_quotes_every_word() -> None:
    assert shell_command(["echo", "a b", "it's", "$(id)"]) == "echo 'a b' 'it'\"'\"'s' '$(id)'"
    assert shell_command(["true"]) == "true"


@pytest.mark.parametrize("word", ["a\nb", "a\rb", "a\x00b"])
def test_shell_command_rejects_control_characters(word: str) -> None:
    with pytest.raises(ValueError, match="NUL, CR or LF"):
        shell_command(["echo", word])


def test_shell_command_rejects_empty_and_plain_string() -> None:
    with pytest.raises(ValueError, match="empty"):
        shell_command([])
    with pytest.raises(ValueError, match="sequence of words"):
        shell_command("echo hi")


def test_errors_survive_pickling() -> None:
    result = CommandResult(
        host="fts101", command="false", exit_code=1, stdout="", stderr="boom", duration_s=0.1
    )
    errors: list[SshError] = [
        TransientSshError("fts101: refused", host="fts101"),
        CommandTimeout("fts101: slow", host="fts101", command="sleep 9", timeout=1.0),
        CommandFailed("fts101: failed", result=result),
        HostKeyError(
            "fts101: CHANGED",
            host="fts101",
            known_hosts=Path("/kh"),
            presented="ssh-ed25519 SHA256:x",
            expected="ssh-ed25519 SHA256:y",
        ),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


# ------------------------------------------------------------------------------------------
# Against real sshd
# ------------------------------------------------------------------------------------------


def test_run_separates_exit_code_stdout_and_stderr(lab: Lab, pool: SshPool) -> None:
    result = pool.run(lab.a.endpoint, "echo out; echo err >&2; exit 3")
    assert result.host == "fts-a"
    assert result.command == "echo out; echo err >&2; exit 3"
    assert result.exit_code == 3
    assert not result.ok
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert 0 <= result.duration_s < 5


def test_a_batch_gives_each_command_its_own_result_in_one_session(lab: Lab, pool: SshPool) -> None:
    marker = lab.base / "batch-pwned"
    nasty = f"x; touch {marker} $(touch {marker})"
    results = pool.run_many(
        lab.a.endpoint,
        [
            "echo out; echo err >&2; exit 3",
            ["printf", "%s", nasty],  # no final newline, and nothing in it runs
            "cat",  # stdin is closed: EOF at once
            "true",
            "echo $SSH_CONNECTION; echo $PPID",
            "echo $SSH_CONNECTION; echo $PPID",
        ],
    )
    assert [(r.exit_code, r.stdout, r.stderr) for r in results[:4]] == [
        (3, "out\n", "err\n"),
        (0, nasty, ""),
        (0, "", ""),
        (0, "", ""),
    ]
    assert results[1].command == shell_command(["printf", "%s", nasty])
    assert not marker.exists()
    # one session: the same connection, the same shell around both subshells
    assert results[4].stdout == results[5].stdout
    # each command timed on the host (to 10 ms), not the batch's time given to all
    assert all(0 <= r.duration_s < 5 for r in results), [r.duration_s for r in results]
    # one command is a plain run
    [one] = pool.run_many(lab.a.endpoint, [["echo", "alone"]])
    assert (one.exit_code, one.stdout) == (0, "alone\n")


def test_a_batch_cut_short_is_a_transient_error(lab: Lab, pool: SshPool) -> None:
    with pytest.raises(TransientSshError, match="ended after 1"):
        pool.run_many(lab.a.endpoint, ["echo first", "kill -KILL $$", "echo never"])


def test_argv_words_arrive_verbatim_and_nothing_is_executed(lab: Lab, pool: SshPool) -> None:
    marker = lab.base / "pwned"
    nasty = f"a b 'c' \"d\"; touch {marker} $(touch {marker}) `touch {marker}` | & > <"
    result = pool.run(lab.a.endpoint, ["printf", "%s", nasty], check=True)
    assert result.stdout == nasty
    assert not marker.exists()
    with pytest.raises(ValueError, match="NUL, CR or LF"):
        pool.run(lab.a.endpoint, ["echo", "line1\nrm -rf /"])


def test_connection_is_reused(lab: Lab, pool: SshPool) -> None:
    first = pool.run(lab.a.endpoint, "echo $SSH_CONNECTION", check=True)
    second = pool.run(lab.a.endpoint, "echo $SSH_CONNECTION", check=True)
    # "client_address client_port server_address server_port": same TCP connection
    assert first.stdout.split()[1] == second.stdout.split()[1]
    assert first.stdout.split()[2:] == [lab.a.address, str(lab.a.port)]


def test_concurrent_commands_share_one_connection(lab: Lab, pool: SshPool) -> None:
    # More concurrent commands than OpenSSH's MaxSessions (10): the pool queues the excess.
    results: list[CommandResult | SshError] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            result: CommandResult | SshError = pool.run(
                lab.b.endpoint, "echo $SSH_CONNECTION; sleep 0.2", timeout=5
            )
        except SshError as error:
            result = error
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 12
    assert all(isinstance(r, CommandResult) and r.ok for r in results), results
    source_ports = {r.stdout.split()[1] for r in results if isinstance(r, CommandResult)}
    assert len(source_ports) == 1


def test_dead_cached_connection_is_replaced_transparently(lab: Lab, pool: SshPool) -> None:
    first = pool.run(lab.a.endpoint, "echo $SSH_CONNECTION", check=True)
    sessions = lab.a.session_pids()
    assert sessions, "expected sshd session processes for the open connection"
    _signal_all(sessions, signal.SIGKILL)  # the server side of the cached connection dies
    second = pool.run(lab.a.endpoint, "echo $SSH_CONNECTION", check=True)
    assert first.stdout.split()[1] != second.stdout.split()[1]


def test_connection_dropped_mid_command_is_transient(lab: Lab, pool: SshPool) -> None:
    pool.run(lab.a.endpoint, "true", check=True)
    pidfile = lab.base / "drop.pid"
    pidfile.unlink(missing_ok=True)
    command = f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 3"
    outcome: list[CommandResult | SshError] = []

    def run() -> None:
        try:
            outcome.append(pool.run(lab.a.endpoint, command, timeout=8))
        except SshError as error:
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        _signal_all(lab.a.sshd_session_pids(), signal.SIGKILL)  # the command itself lives on
        worker.join(timeout=10)
    finally:
        _kill_from_pidfile(pidfile)
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, TransientSshError), error
    assert not isinstance(error, CommandTimeout)
    assert error.command == command
    assert "dropped while" in str(error)
    assert "may or may not have completed" in str(error)
    assert pool.run(lab.a.endpoint, "echo back").stdout == "back\n"


def test_unknown_host_key_is_refused_and_not_learned(lab: Lab) -> None:
    known_hosts = lab.base / "known_hosts_only_b"
    known_hosts.write_text(lab.b.known_hosts_line())
    before = known_hosts.read_bytes()
    with SshPool(lab.settings(known_hosts=known_hosts)) as pool:
        with pytest.raises(HostKeyError) as caught:
            pool.run(lab.a.endpoint, "true")
        assert pool.run(lab.b.endpoint, "true").ok  # the known host still works
    error = caught.value
    assert isinstance(error, PermanentSshError)
    assert not isinstance(error, TransientSshError)
    assert error.host == "fts-a"
    assert error.command is None
    assert not error.changed
    message = str(error)
    assert "fts-a" in message
    assert f"not in known_hosts {known_hosts}" in message
    assert f"[{lab.a.address}]:{lab.a.port}" in message
    assert known_hosts.read_bytes() == before


def test_changed_host_key_is_refused(lab: Lab) -> None:
    impostor = _keygen(lab.base / "impostor_host_key")
    impostor_pub = (lab.base / "impostor_host_key.pub").read_text().split()
    known_hosts = lab.base / "known_hosts_changed"
    known_hosts.write_text(f"[{lab.a.address}]:{lab.a.port} {impostor_pub[0]} {impostor_pub[1]}\n")
    before = known_hosts.read_bytes()
    with SshPool(lab.settings(known_hosts=known_hosts)) as pool:
        with pytest.raises(HostKeyError) as caught:
            pool.run(lab.a.endpoint, "true")
    error = caught.value
    assert error.changed
    message = str(error)
    assert "CHANGED" in message
    assert "man-in-the-middle" in message
    assert str(known_hosts) in message
    # the fingerprints are OpenSSH's own
    real = subprocess.run(
        ["ssh-keygen", "-lf", f"{lab.a.host_key_file}.pub"], capture_output=True, text=True
    ).stdout.split()[1]
    fake = subprocess.run(
        ["ssh-keygen", "-lf", f"{impostor}.pub"], capture_output=True, text=True
    ).stdout.split()[1]
    assert error.presented == f"ssh-ed25519 {real}"
    assert error.expected == f"ssh-ed25519 {fake}"
    assert known_hosts.read_bytes() == before


def test_command_timeout_is_bounded_and_pool_stays_usable(lab: Lab, pool: SshPool) -> None:
    pidfile = lab.base / "timeout.pid"
    command = f"echo $$ > {pidfile}; exec sleep 30"
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout) as caught:
            pool.run(lab.a.endpoint, command, timeout=1)
        elapsed = time.monotonic() - started
    finally:
        _kill_from_pidfile(pidfile)  # SSH cannot kill it: closing the channel leaves it running
    assert elapsed < 15, "bounded by the 1 s timeout, not by the 30 s sleep"
    error = caught.value
    assert isinstance(error, TransientSshError)
    assert error.host == "fts-a"
    assert error.command == command
    assert error.timeout == 1
    assert "fts-a" in str(error)
    assert f"'{command}'" in str(error)
    assert "within 1.0 s" in str(error)
    assert pool.run(lab.a.endpoint, "echo still here").stdout == "still here\n"


def test_frozen_host_times_out(lab: Lab, pool: SshPool) -> None:
    pool.run(lab.a.endpoint, "true", check=True)  # a cached connection
    sessions = lab.a.session_pids()
    _signal_all(sessions, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(CommandTimeout, match="fts-a"):
            pool.run(lab.a.endpoint, "echo hi", timeout=1)
        assert time.monotonic() - started < 15, "bounded by the 1 s timeout"
    finally:
        _signal_all(sessions, signal.SIGCONT)
    assert pool.run(lab.a.endpoint, "echo hi").stdout == "hi\n"


def test_frozen_sshd_is_a_transient_handshake_failure(lab: Lab) -> None:
    os.kill(lab.b.process.pid, signal.SIGSTOP)  # TCP still accepts (backlog), no SSH banner
    try:
        with SshPool(lab.settings(connect_timeout=1.0)) as pool:
            started = time.monotonic()
            with pytest.raises(TransientSshError) as caught:
                pool.run(lab.b.endpoint, "true")
            assert time.monotonic() - started < 15, "bounded by the 1 s connect timeout"
    finally:
        os.kill(lab.b.process.pid, signal.SIGCONT)
    assert not isinstance(caught.value, CommandTimeout)
    assert "fts-b" in str(caught.value)
    assert "handshake" in str(caught.value)


def test_dead_sshd_is_transient(lab: Lab, pool: SshPool) -> None:
    with pytest.raises(TransientSshError) as caught:
        pool.run(lab.dead, "true")
    error = caught.value
    assert error.host == "fts-dead"
    assert f"{lab.dead.address}:{lab.dead.port}" in str(error)
    assert "connection refused" in str(error)


def test_auth_failure_is_permanent(lab: Lab) -> None:
    with SshPool(lab.settings(key_file=lab.wrong_key)) as pool:
        with pytest.raises(PermanentSshError) as caught:
            pool.run(lab.a.endpoint, "true")
    error = caught.value
    assert not isinstance(error, TransientSshError)
    assert not isinstance(error, HostKeyError)
    assert "fts-a" in str(error)
    assert "authentication" in str(error)
    key_text = lab.wrong_key.read_text()
    body = "".join(line for line in key_text.splitlines() if "PRIVATE KEY" not in line)
    assert body[:40] not in str(error)


def test_missing_key_file_and_known_hosts_are_permanent(lab: Lab) -> None:
    missing = lab.base / "no-such-file"
    with SshPool(lab.settings(key_file=missing)) as pool:
        with pytest.raises(PermanentSshError, match=r"private key file .*no-such-file"):
            pool.run(lab.a.endpoint, "true")
    with SshPool(lab.settings(known_hosts=missing)) as pool:
        with pytest.raises(PermanentSshError, match=r"known_hosts file .*no-such-file"):
            pool.run(lab.a.endpoint, "true")
    assert not missing.exists()


def test_check_raises_command_failed(lab: Lab, pool: SshPool) -> None:
    with pytest.raises(CommandFailed) as caught:
        pool.run(lab.a.endpoint, ["sh", "-c", "echo no agent running >&2; exit 7"], check=True)
    error = caught.value
    assert isinstance(error, PermanentSshError)
    assert error.exit_code == 7
    assert error.host == "fts-a"
    assert "exit code 7" in str(error)
    assert "no agent running" in str(error)
    assert error.stderr_tail == "no agent running"


def test_command_killed_by_signal_has_no_exit_status(lab: Lab, pool: SshPool) -> None:
    result = pool.run(lab.a.endpoint, "echo before; kill -KILL $$")
    assert result.exit_code == -1
    assert result.stdout == "before\n"
    with pytest.raises(CommandFailed, match="no exit status"):
        pool.run(lab.a.endpoint, "kill -KILL $$", check=True)


def test_fan_out_is_parallel_and_returns_errors(lab: Lab, pool: SshPool) -> None:
    endpoints = [lab.a.endpoint, lab.b.endpoint, lab.dead]
    started = time.monotonic()
    results = pool.fan_out(endpoints, lambda e: ["sh", "-c", f"sleep 3; echo {e.host}"])
    elapsed = time.monotonic() - started
    assert list(results) == ["fts-a", "fts-b", "fts-dead"]
    for host in ("fts-a", "fts-b"):
        result = results[host]
        assert isinstance(result, CommandResult)
        assert result.stdout == f"{host}\n"
    assert isinstance(results["fts-dead"], TransientSshError)
    # one after the other would take 6 s or more
    assert elapsed < 5.5, f"fan_out took {elapsed:.2f} s: not parallel"


def test_fan_out_respects_parallelism(lab: Lab) -> None:
    with SshPool(lab.settings(parallelism=1)) as pool:
        started = time.monotonic()
        results = pool.fan_out([lab.a.endpoint, lab.b.endpoint], "sleep 0.4")
        elapsed = time.monotonic() - started
    assert all(isinstance(r, CommandResult) and r.ok for r in results.values())
    assert elapsed >= 0.8


def test_fan_out_rejects_duplicate_hosts(lab: Lab, pool: SshPool) -> None:
    with pytest.raises(ValueError, match="fts-a"):
        pool.fan_out([lab.a.endpoint, lab.a.endpoint], "true")


def test_stdin_is_delivered_then_eof(lab: Lab, pool: SshPool) -> None:
    text = "secret line 1\nwörld ✓\n"
    assert pool.run(lab.a.endpoint, "cat", stdin=text).stdout == text
    big = "x" * 3_000_000  # more than paramiko's 2 MiB window: flow control both ways
    assert pool.run(lab.a.endpoint, "wc -c", stdin=big).stdout.strip() == "3000000"
    # no stdin: EOF at once (without it, `cat` would wait and the command time out)
    assert pool.run(lab.a.endpoint, "cat", timeout=5).stdout == ""


def test_command_leaving_a_daemon_returns(lab: Lab, pool: SshPool) -> None:
    pidfile = lab.base / "daemon.pid"
    try:
        # the background sleep holds stdout open; were the run waiting for it, it would time out
        result = pool.run(lab.a.endpoint, f"sleep 8 & echo $! > {pidfile}; echo started", timeout=6)
    finally:
        _kill_from_pidfile(pidfile)
    assert result.ok
    assert result.stdout == "started\n"


def test_output_is_capped(lab: Lab, pool: SshPool, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.adapters.ssh.channel as channel  # where the cap is read

    monkeypatch.setattr(channel, "MAX_OUTPUT_BYTES", 100_000)
    res = pool.run(lab.a.endpoint, "head -c 1000000 /dev/zero | tr '\\0' x; echo done >&2")
    assert res.ok
    assert res.stdout.startswith("x" * 100_000)
    assert res.stdout.endswith("[handover: 900000 more bytes not kept]")
    assert res.stderr == "done\n"
