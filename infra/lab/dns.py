"""The lab's DNS: a real BIND9 primary, authoritative for the site's zone, and a secondary.

Both are `named` from Debian's `bind9`, run in the foreground by the lab on the loopback
addresses of the site's `dns` section. The primary accepts RFC 2136 updates signed with the lab's
TSIG key only (generated per lab with `tsig-keygen`, its secret in the lab's secrets directory,
where the site file's `dns.tsig_key` points); it NOTIFYs the secondary, which transfers the zone
(DNS with several masters). The zone holds the service alias, an A record pointing at the
service's first host, and the service epoch, a TXT record beside it (``epoch=1``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from config.private_files import SecretError, read_secret_file
from config.site import Dns, DnsServer, Site
from infra.lab.errors import LabError
from infra.lab.paths import LabPaths

#: the service epoch a fresh lab starts with
FIRST_EPOCH = 1


class LabDns:
    """The BIND9 primary and secondaries of a lab site (see the module docstring)."""

    def __init__(self, paths: LabPaths, site: Site) -> None:
        if site.dns is None:
            raise LabError(f"site {site.site} has no dns section: the lab runs no DNS server")
        self.paths = paths
        self.site = site
        self.dns: Dns = site.dns
        self.root = paths.root / "dns"

    @property
    def key_file(self) -> Path:
        """The TSIG secret (base64), where the lab site's `dns.tsig_key` points."""
        return self.paths.secrets_dir / "tsig-key"

    def servers(self) -> list[tuple[str, DnsServer]]:
        """(role, server) of every server: the primary first."""
        return [
            ("primary" if i == 0 else f"secondary{i}", srv)
            for i, srv in enumerate(self.dns.servers())
        ]

    def _zone_text(self, address: str) -> str:
        d, zone = self.dns, self.dns.zone.rstrip(".")
        alias = d.alias.rstrip(".")
        rel = alias[: -len(zone) - 1] if alias.endswith("." + zone) else alias + "."
        lines = [
            f"$TTL {d.ttl_s}",
            f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 30 86400 {d.ttl_s}",
            f"@ IN NS ns1.{zone}.",
            f"ns1 IN A {d.server}",
            f"{rel} {d.ttl_s} IN A {address}",
            f'{rel} {d.ttl_s} IN TXT "epoch={FIRST_EPOCH}"',
        ]
        return "\n".join(lines) + "\n"

    def _key_clause(self, secret: str) -> str:
        d = self.dns
        return f'key "{d.tsig_key_name}" {{ algorithm {d.tsig_algorithm}; secret "{secret}"; }};'

    def _conf(self, role: str, srv: DnsServer, secret: str) -> str:
        d = self.dns
        zone = d.zone.rstrip(".")
        here = self.root / role
        notify = "; ".join(f"{s.address} port {s.port}" for s in d.secondaries)
        sources = "; ".join(sorted({s.address for s in d.secondaries}))
        if role == "primary":
            zone_body = (
                f'type primary; file "{here}/zone.db"; notify-delay 0; '
                f'allow-update {{ key "{d.tsig_key_name}"; }}; '
                + (
                    f"notify explicit; also-notify {{ {notify}; }}; "
                    f"allow-transfer {{ {sources}; }};"
                    if d.secondaries
                    else "notify no; allow-transfer { none; };"
                )
            )
        else:
            zone_body = (
                f'type secondary; file "{here}/zone.db"; '
                f"primaries {{ {d.server} port {d.port}; }}; allow-notify {{ {d.server}; }};"
            )
        return f"""{self._key_clause(secret)}
controls {{ }};
options {{
    directory "{here}";
    pid-file "{here}/named.pid";
    session-keyfile "{here}/session.key";
    managed-keys-directory "{here}";
    listen-on port {srv.port} {{ {srv.address}; }};
    listen-on-v6 {{ none; }};
    automatic-interface-scan no;
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
    minimal-responses no;
}};
logging {{ channel main {{ file "{here}/named.log"; severity info; print-time yes; }};
    category default {{ main; }}; }};
zone "{zone}" {{ {zone_body} }};
"""

    def prepare(self) -> None:
        """Write the key, the configurations and the primary's zone (the alias at the first
        front-end host, else the first host; epoch 1). Idempotent: a lab that starts again
        starts from this state."""
        if shutil.which("named") is None:
            raise LabError("named is missing: as root, apt-get install -y bind9")
        self.paths.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.key_file.exists():
            # private from its first byte: handover refuses a secret file others may read
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        try:
            secret = read_secret_file(self.key_file)
        except SecretError as exc:
            raise LabError(str(exc)) from exc
        shutil.rmtree(self.root, ignore_errors=True)
        fe = self.site.frontend
        first = self.site.host(fe.hosts[0]).address if fe else self.site.hosts[0].address
        for role, srv in self.servers():
            here = self.root / role
            here.mkdir(parents=True)
            (here / "named.conf").write_text(self._conf(role, srv, secret))
            if role == "primary":
                (here / "zone.db").write_text(self._zone_text(first))

    def start(self) -> dict[str, int]:
        """Start every server (primary first); returns their PIDs by role.

        Raises:
            LabError: a server exited or did not answer within 20 s (with its log's tail).
        """
        pids: dict[str, int] = {}
        try:
            for role, srv in self.servers():
                here = self.root / role
                log = here / "named.stderr"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(
                        ["named", "-f", "-c", str(here / "named.conf")],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                pids[role] = proc.pid
                self._wait_answering(role, srv, proc, here)
        except BaseException:
            self.stop(pids)  # the caller never learns these PIDs: stop them here
            raise
        return pids

    def _wait_answering(
        self, role: str, srv: DnsServer, proc: subprocess.Popen[bytes], here: Path
    ) -> None:
        import dns.message
        import dns.query
        import dns.rcode

        deadline = time.monotonic() + 20
        q = dns.message.make_query(self.dns.zone, "SOA")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with contextlib.suppress(Exception):
                r = dns.query.udp(q, srv.address, port=srv.port, timeout=0.5)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    return
            time.sleep(0.1)
        tail = ""
        for name in ("named.stderr", "named.log"):
            with contextlib.suppress(OSError):
                tail += (here / name).read_text(errors="replace")[-800:]
        raise LabError(f"DNS {role} at {srv.address}:{srv.port} did not answer; log:\n{tail}")

    @staticmethod
    def stop(pids: dict[str, int]) -> None:
        """Stop the servers by PID (SIGTERM, then SIGKILL after 5 s)."""
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in pids.values():
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):  # reap it when it is our child
                    os.waitpid(pid, os.WNOHANG)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
