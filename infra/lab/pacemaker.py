"""A one-node Pacemaker cluster for the lab: started and stopped by the tests that need one.

Stdlib only.  Needs root and the Debian packages ``corosync``, ``pacemaker``
(pulls in ``pacemaker-cli-utils`` and ``pacemaker-resource-agents`` which ships
``ocf:pacemaker:Dummy``).  crmsh/pcs are *not* needed.

Only one cluster can run per machine (IPC names, /var/lib/pacemaker and the
corosync port are global), so :meth:`OneNodeCluster.start` refuses to run when
a ``corosync`` or ``pacemakerd`` process already exists.

Typical use::

    c = OneNodeCluster("/opt/handover/infra/hooks/pacemaker_alert.py",
                       alert_env={"HANDOVER_GATEWAY_URL": url})
    c.start(timeout_s=60)
    try:
        c.fail_resource()
        ...  # wait for the alert agent to be called
    finally:
        c.stop()
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import quoteattr

PCMK_STATE_DIRS: tuple[str, ...] = (
    "/var/lib/pacemaker/cib",
    "/var/lib/pacemaker/pengine",
    "/var/lib/pacemaker/blackbox",
    "/var/lib/pacemaker/cores",
)
"""Directories whose *contents* are wiped before start and after stop."""

FAIL_METHODS: tuple[str, ...] = ("state-file", "crm-fail", "force-stop")


class ClusterError(RuntimeError):
    """Raised when the cluster cannot be started or a command fails."""


def _proc_start_time(pid: int) -> int | None:
    """Return the start time (clock ticks since boot) of *pid*, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    # comm may contain spaces/parentheses: split after the last ')'.
    fields = data.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 overall


def _proc_state(pid: int) -> str | None:
    """Return the one-letter state of *pid* (e.g. 'S', 'Z'), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _children_of(ppid: int) -> list[int]:
    """Return PIDs whose parent is *ppid* (scans /proc)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                rest = fh.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == ppid:
            out.append(int(entry))
    return out


def _pids_named(names: Sequence[str]) -> list[int]:
    """Return live (non-zombie) PIDs whose /proc/<pid>/comm is one of *names*."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm in names and _proc_state(int(entry)) not in (None, "Z"):
            found.append(int(entry))
    return found


class OneNodeCluster:
    """A one-node corosync + pacemakerd cluster run as child processes.

    Corosync and pacemakerd run in the foreground (``-f``) in their own
    sessions; their PIDs and the PIDs of pacemakerd's sub-daemons are recorded
    so :meth:`stop` can terminate exactly those processes.

    Attributes:
        timings: seconds spent in phases of the last start/stop
            (``corosync``, ``dc``, ``configured``, ``resource``, ``start_total``,
            ``stop_pacemaker``, ``stop_corosync``, ``stop_total``).
    """

    def __init__(
        self,
        alert_agent: str,
        *,
        workdir: str = "/var/tmp/handover-lab/pacemaker",
        recipient: str | None = None,
        alert_env: Mapping[str, str] | None = None,
        alert_timeout: str = "10s",
        resource_id: str = "fts-agents",
        resource_type: str = "ocf:pacemaker:Dummy",
        resource_params: Mapping[str, str] | None = None,
        resource_meta: Mapping[str, str] | None = None,
        monitor_interval: str = "1s",
        dc_deadtime: str = "500ms",
        transport: str = "udpu",
        preseed: bool = True,
        bind_addr: str = "127.0.0.1",
    ) -> None:
        """Configure (but do not start) the cluster.

        Args:
            alert_agent: absolute path of the alert agent executable.  It runs
                as user ``hacluster``, so it and its directories must be
                readable/executable by that user.
            workdir: directory for corosync.conf, logs, the Dummy state file
                and (by default) the alert log.  Created with mode 0755; it and
                its parents must be traversable by ``hacluster``.
                ``pacemaker.log`` and ``alerts.log`` in it are truncated by start().
            recipient: alert recipient value (``CRM_alert_recipient``); defaults
                to ``<workdir>/alerts.log`` (created writable by hacluster).
            alert_env: extra variables for the agent; stored as the alert's
                ``instance_attributes`` and delivered verbatim as env vars.
            alert_timeout: alert ``timeout`` meta-attribute (Pacemaker default 30s).
            resource_id: id of the primitive.
            resource_type: its agent, ``class:provider:type`` (default the Dummy, whose
                ``state`` file `fail_resource` deletes).
            resource_params: its instance attributes (default for the Dummy: its state file).
            resource_meta: its meta attributes (e.g. ``is-managed: "false"``: monitored only).
            monitor_interval: interval of its recurring monitor.
            dc_deadtime: cluster option; it only shortens the *first* election
                if it is already in the CIB when pacemakerd starts (see ``preseed``).
                Default 20s -> ~23 s to DC; 2s -> ~4.5 s; 500ms -> ~3 s.
                "0s" must not be used: no DC is ever elected.
            transport: corosync transport, ``udpu`` (fast stop) or ``knet``.
            preseed: write cluster options + alert into a fresh cib.xml before
                pacemakerd starts (fast first election, and node "member"
                alerts at startup are delivered).  If False, everything is
                configured with crm_attribute/cibadmin after the DC is elected.
            bind_addr: loopback address for ring0.
        """
        self.alert_agent = alert_agent
        self.workdir = Path(workdir)
        self.recipient = recipient or str(self.workdir / "alerts.log")
        self.alert_env: dict[str, str] = dict(alert_env or {})
        self.alert_timeout = alert_timeout
        self.resource_id = resource_id
        self.resource_type = resource_type
        self.resource_params = dict(resource_params) if resource_params is not None else None
        self.resource_meta = dict(resource_meta or {})
        self.monitor_interval = monitor_interval
        self.dc_deadtime = dc_deadtime
        self.transport = transport
        self.preseed = preseed
        self.bind_addr = bind_addr
        self.node_name: str = os.uname().nodename
        self.state_file: Path = self.workdir / f"{resource_id}.state"
        self.corosync: subprocess.Popen[bytes] | None = None
        self.pacemakerd: subprocess.Popen[bytes] | None = None
        self.child_pids: dict[int, int | None] = {}  # pid -> /proc start time
        self.timings: dict[str, float] = {}
        self._logs: list[BinaryIO] = []
        self._env: dict[str, str] = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PCMK_logfile": str(self.workdir / "pacemaker.log"),
        }

    # ------------------------------------------------------------------ utils
    def _run(
        self, args: Sequence[str], check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a Pacemaker CLI command, raising ClusterError on failure if *check*."""
        cp = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, env=self._env
        )
        if check and cp.returncode != 0:
            raise ClusterError(
                f"{' '.join(args)} -> rc={cp.returncode}: {cp.stderr.strip() or cp.stdout.strip()}"
            )
        return cp

    @staticmethod
    def _wait(pred: Callable[[], bool], timeout_s: float, what: str, step: float = 0.1) -> None:
        """Poll *pred* until true or raise ClusterError after *timeout_s*."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if pred():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(step)

    @staticmethod
    def clean_state() -> None:
        """Remove persisted CIB/scheduler state so the next start is fresh."""
        for d in PCMK_STATE_DIRS:
            p = Path(d)
            if not p.is_dir():
                continue
            for f in p.iterdir():
                if f.is_dir() and not f.is_symlink():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)

    def _hacluster_ids(self) -> tuple[int, int]:
        return pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid

    # ------------------------------------------------------------ xml bits
    def alert_xml(self) -> str:
        """Return the ``<alert>`` element registered in the CIB."""
        aid = "fts-alert"
        nv = "".join(
            f"<nvpair id={quoteattr(f'{aid}-ia-{k}')} name={quoteattr(k)} value={quoteattr(v)}/>"
            for k, v in self.alert_env.items()
        )
        ia = f'<instance_attributes id="{aid}-ia">{nv}</instance_attributes>' if nv else ""
        return (
            f'<alert id="{aid}" path={quoteattr(self.alert_agent)}>'
            f'<meta_attributes id="{aid}-meta">'
            f'<nvpair id="{aid}-meta-timeout" name="timeout" '
            f"value={quoteattr(self.alert_timeout)}/>"
            f'<nvpair id="{aid}-meta-tsfmt" name="timestamp-format" '
            f'value="%Y-%m-%dT%H:%M:%S.%06NZ"/>'
            f"</meta_attributes>{ia}"
            f'<recipient id="{aid}-recipient" value={quoteattr(self.recipient)}/>'
            f"</alert>"
        )

    def resource_xml(
        self,
        resource_id: str | None = None,
        resource_type: str | None = None,
        resource_params: Mapping[str, str] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Return the ``<primitive>`` of a resource (default: the cluster's own, the Dummy
        unless told otherwise), with its meta attributes (e.g. ``is-managed``)."""
        r = resource_id or self.resource_id
        klass, provider, kind = (resource_type or self.resource_type).split(":")
        params = resource_params if resource_id else self.resource_params
        meta = meta if resource_id else (meta or self.resource_meta)
        if params is None:
            params = {"state": str(self.state_file)} if kind == "Dummy" else {}
        nv = "".join(
            f"<nvpair id={quoteattr(f'{r}-ia-{k}')} name={quoteattr(k)} value={quoteattr(v)}/>"
            for k, v in params.items()
        )
        mv = "".join(
            f"<nvpair id={quoteattr(f'{r}-meta-{k}')} name={quoteattr(k)} value={quoteattr(v)}/>"
            for k, v in (meta or {}).items()
        )
        return (
            f"<primitive id={quoteattr(r)} class={quoteattr(klass)} "
            f"provider={quoteattr(provider)} type={quoteattr(kind)}>"
            f'<instance_attributes id="{r}-ia">{nv}</instance_attributes>'
            + (f'<meta_attributes id="{r}-meta">{mv}</meta_attributes>' if meta else "")
            + f'<operations><op id="{r}-monitor" name="monitor"'
            f' interval={quoteattr(self.monitor_interval)} timeout="20s"/></operations>'
            f"</primitive>"
        )

    def _options(self) -> dict[str, str]:
        return {
            "stonith-enabled": "false",
            "no-quorum-policy": "ignore",
            "dc-deadtime": self.dc_deadtime,
            "cluster-recheck-interval": "1min",
        }

    def _write_initial_cib(self) -> None:
        """Write /var/lib/pacemaker/cib/cib.xml (schema taken from ``cibadmin --empty``)."""
        root = ET.fromstring(self._run(["cibadmin", "--empty"]).stdout)  # noqa: S314 - local tool
        conf = root.find("configuration")
        assert conf is not None
        crm = conf.find("crm_config")
        assert crm is not None
        ps = ET.SubElement(crm, "cluster_property_set", id="cib-bootstrap-options")
        for k, v in self._options().items():
            ET.SubElement(ps, "nvpair", id=f"cib-bootstrap-options-{k}", name=k, value=v)
        alerts = ET.SubElement(conf, "alerts")
        alerts.append(ET.fromstring(self.alert_xml()))  # noqa: S314 - built here
        path = Path("/var/lib/pacemaker/cib/cib.xml")
        path.write_bytes(ET.tostring(root))
        uid, gid = self._hacluster_ids()
        os.chown(path, uid, gid)
        os.chmod(path, 0o600)

    def _corosync_conf(self) -> str:
        return f"""totem {{
    version: 2
    cluster_name: fts-test
    transport: {self.transport}
    crypto_cipher: none
    crypto_hash: none
    token: 1000
}}
logging {{
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: {self.workdir / "corosync.log"}
    timestamp: hires
}}
quorum {{
    provider: corosync_votequorum
}}
nodelist {{
    node {{
        name: {self.node_name}
        nodeid: 1
        ring0_addr: {self.bind_addr}
    }}
}}
"""

    # ----------------------------------------------------------- queries
    def dc_elected(self) -> bool:
        """True when crm_mon reports a DC and the local node online."""
        cp = self._run(["crm_mon", "-1", "--output-as=xml"], check=False, timeout=10)
        if cp.returncode != 0:
            return False
        root = ET.fromstring(cp.stdout)  # noqa: S314 - crm_mon's own output
        dc = root.find("./summary/current_dc")
        node = root.find(f"./nodes/node[@name='{self.node_name}']")
        return (
            dc is not None
            and dc.get("present") == "true"
            and node is not None
            and node.get("online") == "true"
        )

    def resource_running(self, resource_id: str | None = None) -> bool:
        """True when the resource (default: the cluster's own) is started on the local node."""
        cp = self._run(
            ["crm_resource", "--resource", resource_id or self.resource_id, "--locate"],
            check=False,
            timeout=10,
        )
        return cp.returncode == 0 and "is running on" in cp.stdout

    def pids(self) -> list[int]:
        """PIDs started by this object (corosync, pacemakerd, its sub-daemons)."""
        out = [p.pid for p in (self.corosync, self.pacemakerd) if p is not None]
        return out + list(self.child_pids)

    def alive_pids(self) -> list[int]:
        """Subset of :meth:`pids` still alive (PID-reuse safe for sub-daemons)."""
        alive = [
            p.pid for p in (self.corosync, self.pacemakerd) if p is not None and p.poll() is None
        ]
        for pid, st in self.child_pids.items():
            if (
                st is not None
                and _proc_start_time(pid) == st
                and _proc_state(pid) not in (None, "Z")
            ):
                alive.append(pid)
        return alive

    # ------------------------------------------------------------ control
    def start(self, timeout_s: float = 60.0) -> dict[str, float]:
        """Start corosync + pacemakerd, wait for a DC, configure, start the resource.

        Returns a copy of :attr:`timings` (seconds since the call).  On any
        failure everything already started is stopped again.
        """
        if os.geteuid() != 0:
            raise ClusterError("must run as root")
        running = _pids_named(["corosync", "pacemakerd"])
        if running:
            raise ClusterError(
                f"corosync/pacemakerd already running (pids {running}); refusing to start"
            )
        t0 = time.monotonic()
        self.timings = {}
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # noqa: S103 - hacluster must reach the agent's files
        uid, gid = self._hacluster_ids()
        for name in ("pacemaker.log", "alerts.log"):
            f = self.workdir / name
            f.write_bytes(b"")
            os.chown(f, uid, gid)
            os.chmod(f, 0o664)
        if self.recipient.startswith("/") and not Path(self.recipient).exists():
            Path(self.recipient).touch()
            os.chown(self.recipient, uid, gid)
        (self.workdir / "corosync.log").unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        self.clean_state()
        if self.preseed:
            self._write_initial_cib()
        conf = self.workdir / "corosync.conf"
        conf.write_text(self._corosync_conf())
        try:
            self._logs.append(open(self.workdir / "corosync.out", "wb"))
            self.corosync = subprocess.Popen(
                ["corosync", "-f", "-c", str(conf)],
                stdout=self._logs[-1],
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,
            )
            self._wait(
                lambda: (
                    (
                        self.corosync is not None
                        and self.corosync.poll() is None
                        and re.search(
                            r"^Quorate:\s+Yes",
                            self._run(["corosync-quorumtool", "-s"], check=False, timeout=5).stdout,
                            re.M,
                        )
                        is not None
                    )
                    or self._died("corosync", self.corosync)
                ),
                timeout_s,
                "corosync quorum",
                step=0.05,
            )
            self.timings["corosync"] = time.monotonic() - t0
            self._logs.append(open(self.workdir / "pacemakerd.out", "wb"))
            self.pacemakerd = subprocess.Popen(
                ["pacemakerd", "-f"],
                stdout=self._logs[-1],
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                start_new_session=True,
            )
            remaining = timeout_s - (time.monotonic() - t0)
            self._wait(
                lambda: self._died("pacemakerd", self.pacemakerd) or self.dc_elected(),
                remaining,
                "DC election",
                step=0.2,
            )
            self.timings["dc"] = time.monotonic() - t0
            self._record_children()
            self.configure()
            self.timings["configured"] = time.monotonic() - t0
            remaining = timeout_s - (time.monotonic() - t0)
            self._wait(self.resource_running, max(remaining, 5), f"{self.resource_id} to start")
            self.timings["resource"] = self.timings["start_total"] = time.monotonic() - t0
            self._record_children()
        except BaseException:
            self.stop()
            raise
        return dict(self.timings)

    def _died(self, name: str, proc: subprocess.Popen[bytes] | None) -> bool:
        if proc is not None and proc.poll() is not None:
            raise ClusterError(f"{name} exited with rc={proc.returncode}; see {self.workdir}")
        return False

    def _record_children(self) -> None:
        if self.pacemakerd is None:
            return
        for pid in _children_of(self.pacemakerd.pid):
            self.child_pids.setdefault(pid, _proc_start_time(pid))

    def configure(self) -> None:
        """Apply options (crm_attribute), the Dummy resource and the alert (cibadmin).

        Idempotent with respect to the preseeded CIB.
        """
        for k, v in self._options().items():
            self._run(["crm_attribute", "--type", "crm_config", "--name", k, "--update", v])
        if not self.preseed:
            self.register_alert()
        self._run(
            ["cibadmin", "--create", "--scope", "resources", "--xml-text", self.resource_xml()]
        )

    def add_resource(
        self,
        resource_id: str,
        resource_type: str,
        resource_params: Mapping[str, str],
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Add another primitive to the running cluster (same monitor interval); Pacemaker
        starts it (see `resource_running`), or, with ``is-managed=false``, only probes and
        monitors it."""
        xml = self.resource_xml(resource_id, resource_type, resource_params, meta)
        self._run(["cibadmin", "--create", "--scope", "resources", "--xml-text", xml])

    def register_alert(self) -> None:
        """Add (or replace) the alert in the live CIB with cibadmin."""
        self._run(["cibadmin", "--delete", "--xml-text", '<alert id="fts-alert"/>'], check=False)
        if self._run(["cibadmin", "--query", "--scope", "alerts"], check=False).returncode == 0:
            self._run(["cibadmin", "--create", "--scope", "alerts", "--xml-text", self.alert_xml()])
        else:  # a fresh CIB has no <alerts> section; --scope alerts then fails with EINVAL
            self._run(
                [
                    "cibadmin",
                    "--create",
                    "--scope",
                    "configuration",
                    "--xml-text",
                    f"<alerts>{self.alert_xml()}</alerts>",
                ]
            )

    def fail_resource(self, method: str = "state-file") -> None:
        """Make the Dummy resource fail so Pacemaker raises a resource alert.

        Methods (all produce ``CRM_alert_kind=resource`` with non-zero rc):

        * ``state-file``: delete the Dummy state file; the next recurring
          monitor (<= monitor_interval) returns 7 -> alert task=monitor rc=7
          desc="not running".  Most realistic.
        * ``crm-fail``: ``crm_resource --fail``; immediate synthetic failure ->
          alert task=asyncmon interval=0 rc=1 desc=error.
        * ``force-stop``: ``crm_resource --force-stop`` runs the agent's stop
          behind Pacemaker's back; same alert as ``state-file``.

        Pacemaker then recovers the resource (stop/start alerts follow) and the
        fail-count becomes 1; call :meth:`cleanup` before failing it again if needed.
        """
        if method == "state-file":
            self.state_file.unlink()
        elif method == "crm-fail":
            self._run(
                ["crm_resource", "--resource", self.resource_id, "--fail", "--node", self.node_name]
            )
        elif method == "force-stop":
            self._run(["crm_resource", "--resource", self.resource_id, "--force-stop"])
        else:
            raise ValueError(f"method must be one of {FAIL_METHODS}")

    def trigger_fencing_alert(self, node: str = "ghost-node") -> int:
        """Ask the fencer to fence a non-existent *node* (no device -> fails fast).

        Pacemaker still raises ``CRM_alert_kind=fencing`` (rc=-19, "No fence
        device").  Nothing is really fenced.  Returns stonith_admin's exit code.
        """
        return self._run(
            ["stonith_admin", "--fence", node, "--timeout", "5"], check=False
        ).returncode

    def cleanup(self) -> None:
        """Clear the resource's fail-count / failed operations."""
        self._run(["crm_resource", "--resource", self.resource_id, "--cleanup"])

    def stop(self, timeout_s: float = 30.0) -> dict[str, float]:
        """Stop pacemakerd, then corosync, by PID; kill leftovers; wipe state.

        SIGTERM to pacemakerd makes it stop the resource and all sub-daemons
        (~0.1 s).  The sub-daemons each run in their *own* session (setsid), so
        if pacemakerd died abnormally they are orphaned and a process-group kill
        would miss them: they are SIGKILLed by their recorded PIDs (start time
        checked against PID reuse).  Safe to call repeatedly or after a partial
        start.  Raises ClusterError if a recorded process is still alive.
        """
        t0 = time.monotonic()
        pm = self.pacemakerd
        if pm is not None:
            self._record_children()
            self._terminate(pm, timeout_s)
            # Sub-daemons normally exit with pacemakerd; make sure (same session/pgid).
            for pid, st in list(self.child_pids.items()):
                if st is not None and _proc_start_time(pid) == st:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._killpg(pm.pid)
        self.timings["stop_pacemaker"] = time.monotonic() - t0
        if self.corosync is not None:
            self._terminate(self.corosync, timeout_s)
            self._killpg(self.corosync.pid)
        self.timings["stop_total"] = time.monotonic() - t0
        self.timings["stop_corosync"] = self.timings["stop_total"] - self.timings["stop_pacemaker"]
        deadline = time.monotonic() + 5
        while self.alive_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = self.alive_pids()
        self._remove_shm()
        self.clean_state()
        self.corosync = self.pacemakerd = None
        self.child_pids = {}
        for fh in self._logs:
            fh.close()
        self._logs = []
        if leftover:
            raise ClusterError(f"processes still alive after stop: {leftover}")
        return dict(self.timings)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    @staticmethod
    def _killpg(pgid: int) -> None:
        """SIGKILL whatever is left in the process group *pgid* (our session)."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _remove_shm(self) -> None:
        """Remove libqb /dev/shm files left by our (killed) processes."""
        ours = {str(p) for p in self.pids()}
        shm = Path("/dev/shm")
        if not shm.is_dir():
            return
        for f in shm.iterdir():
            parts = f.name.split("-")
            if f.name.startswith("qb-") and ours.intersection(parts[1:3]):
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)

    def __enter__(self) -> OneNodeCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
