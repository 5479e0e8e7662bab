"""`GeoLab`: the geo lab's programmatic interface, for the CLI (``handover lab up --geo``...),
the tests and the benchmarks.

`up` starts, from a geo site file: per tool and site a MariaDB server (the first site's the
writable primary, the others its GTID replicas, read-only), the zone's masters and the sites'
resolvers (`infra.lab.geo.dns`), and per tool and site the tool's HTTPS application
(`infra.lab.geo.tool`). Everything it starts is recorded by PID in the state directory's
``geo-lab.json``, so `down` stops it all, even from another process. Faults: a whole site lost
at once (`kill_site`: its tools, databases and masters killed; its resolvers stay, they are the
clients' side) and brought back from its data (`restore_site`), a site's masters stopped and
started (`stop_master`, `start_master`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from config.loader import load_site
from config.site import Geo, Site, Tool
from infra.lab.errors import LabError
from infra.lab.geo import mariadb, observe, procs, toolproc
from infra.lab.geo import secrets as labsecrets
from infra.lab.geo.clients import WriteLoad, WriteLoadProcess
from infra.lab.geo.dns import DnsRole, GeoDns
from infra.lab.geo.paths import GeoPaths
from infra.lab.geo.procs import ProcRef
from infra.lab.geo.views import GeoStatus

#: what the geo lab runs: command -> the Debian package that provides it
REQUIRED_COMMANDS = {
    mariadb.MARIADBD: "mariadb-server",
    mariadb.INSTALL_DB: "mariadb-server",
    "named": "bind9",
}
APT_PACKAGES = "mariadb-server bind9"

Progress = Callable[[str], None]

__all__ = ["APT_PACKAGES", "GeoLab", "LabError", "missing_prerequisites"]


def _quiet(_msg: str) -> None:
    pass


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")


def missing_prerequisites() -> list[str]:
    """What the geo lab needs that this machine lacks, each with its Debian package."""
    missing = [] if os.geteuid() == 0 else ["root (the lab runs mariadbd as root)"]
    missing += [f"{c} (Debian package {p})" for c, p in REQUIRED_COMMANDS.items() if not _which(c)]
    return missing


class GeoLab:
    """The geo lab of one geo site file (its state directory: the site's ``lab.state_dir``)."""

    def __init__(self, site: Site) -> None:
        if site.geo is None:
            raise LabError(f"site {site.site} has no `geo:` section; the geo lab runs geo sites")
        state = (site.lab or {}).get("state_dir")
        if not state:
            raise LabError(f"site {site.site} has no `lab.state_dir`: the geo lab runs lab sites")
        self.site = site
        self.geo: Geo = site.geo
        self.paths = GeoPaths(Path(state))
        self.dns = GeoDns(self.paths, self.geo)
        self._lock = threading.Lock()
        seen: dict[tuple[str, int], str] = {}
        self.dbs: dict[tuple[str, str], mariadb.DbServer] = {}
        for tool in self.geo.tools:
            for name, placement in tool.sites.items():
                at = (placement.db_host, placement.db_port or tool.database.port)
                if at in seen:
                    raise LabError(
                        f"the geo lab runs one MariaDB server per tool and site; {seen[at]} and "
                        f"{tool.name} at {name} are both at {at[0]}:{at[1]}"
                    )
                seen[at] = f"{tool.name} at {name}"
                self.dbs[(tool.name, name)] = mariadb.DbServer(
                    self.paths.db_dir(tool.name, name),
                    what=f"MariaDB of {tool.name} at {name}",
                    host=at[0],
                    port=at[1],
                    server_id=len(self.dbs) + 1,
                )

    @classmethod
    def from_file(cls, path: str | Path) -> GeoLab:
        """The geo lab of a site file."""
        return cls(load_site(path))

    # --- the record ----------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The running lab's record, or {} when it is down."""
        try:
            data: dict[str, Any] = json.loads(self.paths.record.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def _save(self, rec: dict[str, Any]) -> None:
        tmp = self.paths.record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        os.replace(tmp, self.paths.record)

    def _add(self, rec: dict[str, Any], key: str, ref: ProcRef) -> None:
        with self._lock:
            rec["procs"][key] = ref.model_dump()
            self._save(rec)

    def _procs(self) -> dict[str, ProcRef]:
        return procs.refs_of(self.record().get("procs", {}))

    def is_up(self) -> bool:
        """Whether anything the lab started still runs."""
        return any(r.running() for r in self._procs().values())

    def _tool(self, tool: str | None) -> Tool:
        return self.geo.tool(tool) if tool else self.geo.tools[0]

    def _site_name(self, name: str) -> str:
        try:
            return self.geo.site(name).name
        except KeyError as exc:
            raise LabError(str(exc.args[0])) from None

    # --- up and down ---------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> dict[str, Any]:
        """Start everything from scratch; on failure stop what was started and raise LabError.

        Returns:
            A report: the site, its file, each tool's URL per site, the resolvers, and the
            seconds of each phase.

        Raises:
            LabError: something is missing, the lab is already up, or a part did not come up
                in time (the message names it, with its log's tail).
        """
        missing = missing_prerequisites()
        if missing:
            raise LabError(
                "the geo lab cannot start; missing: "
                + "; ".join(missing)
                + f". As root: apt-get install -y {APT_PACKAGES}"
            )
        if self.record():
            if self.is_up():
                raise LabError(
                    f"the geo lab is already up (site {self.record().get('site')}, state "
                    f"{self.paths.root}); run `handover lab down --geo` first"
                )
            progress("a previous geo lab did not stop cleanly; cleaning up first")
            self.down()
        t0 = time.monotonic()
        seconds: dict[str, float] = {}
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.site_file.write_text(
            yaml.safe_dump(
                self.site.model_dump(mode="json", exclude_defaults=True), sort_keys=False
            )
        )
        rec: dict[str, Any] = {
            "site": self.site.site,
            "state_dir": str(self.paths.root),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "procs": {},
            "killed": [],
        }
        self._save(rec)
        try:
            self._up(rec, seconds, progress)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        seconds["total"] = time.monotonic() - t0
        return {
            "site": self.site.site,
            "site_file": str(self.paths.site_file),
            "state_dir": str(self.paths.root),
            "tools": {
                t.name: {s: f"https://{p.address}:{t.port}" for s, p in t.sites.items()}
                for t in self.geo.tools
            },
            "resolvers": {
                s.name: [f"{r.address}:{r.port}" for r in s.resolvers] for s in self.geo.sites
            },
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
        }

    def _up(self, rec: dict[str, Any], seconds: dict[str, float], progress: Progress) -> None:
        t = time.monotonic()
        progress("secrets: the TSIG key, the accounts' passwords, the CA and certificates")
        labsecrets.make_secrets(self.geo, self.paths)
        certs = labsecrets.make_certificates(self.geo, self.paths)
        seconds["secrets"] = time.monotonic() - t
        t = time.monotonic()
        progress(f"databases: installing and starting {len(self.dbs)} MariaDB servers")
        for db in self.dbs.values():
            db.configure()
        installs = {k: db.install() for k, db in self.dbs.items()}
        try:
            for k, proc in installs.items():
                self.dbs[k].finish_install(proc)
        finally:  # one failed: the others are not left running unrecorded
            for proc in installs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        self._parallel({f"db:{k[0]}:{k[1]}": db.start for k, db in self.dbs.items()}, rec)
        app_password = labsecrets.read(self.paths.app_password)
        for tool in self.geo.tools:
            tdb = tool.database
            admin = (tdb.user, self.admin_password(tool.name))
            repl_file = labsecrets.secret_file(tdb.replication_password, "replication_password")
            replication = (tdb.replication_user, labsecrets.read(repl_file))
            for site in tool.sites:
                self.dbs[(tool.name, site)].make_accounts(
                    schema=tdb.database,
                    admin=admin,
                    replication=replication,
                    app=(labsecrets.APP_USER, app_password),
                )
            first, *others = tool.sites
            primary = self.dbs[(tool.name, first)]
            primary.make_schema(tdb.database, first)
            for site in others:
                self.dbs[(tool.name, site)].replicate_from(primary, *replication)
        seconds["databases"] = time.monotonic() - t
        t = time.monotonic()
        roles = self.dns.roles()
        progress(f"dns: starting {len(roles)} named (the zone's masters, the sites' resolvers)")
        key = labsecrets.read(labsecrets.secret_file(self.geo.tsig_key, "geo.tsig_key"))
        self.dns.prepare(key)
        for kind in ("master", "resolver"):
            self._parallel(
                {f"dns:{r.key}": partial(self.dns.start, r) for r in roles if r.kind == kind},
                rec,
            )
        seconds["dns"] = time.monotonic() - t
        t = time.monotonic()
        progress("replication: waiting for the replicas to apply the schema")
        for tool in self.geo.tools:
            for site in list(tool.sites)[1:]:
                self.dbs[(tool.name, site)].wait_applied(tool.database.database)
        seconds["replication"] = time.monotonic() - t
        t = time.monotonic()
        progress("tools: starting each tool's HTTPS application at every site")
        for tool in self.geo.tools:
            for site in tool.sites:
                toolproc.write_config(self.geo, self.paths, tool, site, certs[(tool.name, site)])
        self._parallel(
            {
                f"tool:{tool.name}:{site}": partial(toolproc.start, self.paths, tool, site)
                for tool in self.geo.tools
                for site in tool.sites
            },
            rec,
        )
        seconds["tools"] = time.monotonic() - t

    def _parallel(self, jobs: dict[str, Callable[[], ProcRef]], rec: dict[str, Any]) -> None:
        """Run starts at once, recording each process as it comes up.

        Raises:
            LabError: the first failure (the others that came up are in the record).
        """
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = {key: pool.submit(job) for key, job in jobs.items()}
            errors = []
            for key, fut in futures.items():
                try:
                    self._add(rec, key, fut.result())
                except Exception as exc:  # noqa: BLE001 - each recorded; the first raised below
                    errors.append(exc)
        if errors:
            if isinstance(errors[0], LabError):
                raise errors[0]
            raise LabError(str(errors[0])) from errors[0]

    def down(self) -> dict[str, Any]:
        """Stop everything the lab started (its tools, then DNS, then databases) by PID.

        Returns:
            A report: how many processes were stopped, leftovers (expected empty), seconds.
        """
        t0 = time.monotonic()
        refs = self._procs()
        running = [r for r in refs.values() if r.running()]
        leftovers: list[str] = []
        for prefix in ("tool:", "dns:", "db:"):
            leftovers += procs.stop([r for k, r in refs.items() if k.startswith(prefix)])
        if not leftovers:
            with contextlib.suppress(FileNotFoundError):
                self.paths.record.unlink()
        return {
            "site": self.site.site,
            "stopped": len(running),
            "leftovers": leftovers,
            "seconds": round(time.monotonic() - t0, 2),
        }

    def remove_state(self) -> None:
        """Delete the state directory (databases, zones, secrets, logs) after `down`.

        Raises:
            LabError: the lab still runs.
        """
        if self.paths.record.exists():
            raise LabError(f"the geo lab of {self.site.site} still runs: `down` first")
        shutil.rmtree(self.paths.root, ignore_errors=True)

    # --- faults --------------------------------------------------------------------------------

    def _site_keys(self, site: str) -> dict[str, Callable[[], ProcRef]]:
        """The processes of `site` a site loss takes, each with how to start it again."""
        out: dict[str, Callable[[], ProcRef]] = {}
        for (tool, s), db in self.dbs.items():
            if s == site:
                out[f"db:{tool}:{s}"] = db.start
        for role in self._masters(site):
            out[f"dns:{role.key}"] = partial(self.dns.start, role)
        for t in self.geo.tools:
            if site in t.sites:
                out[f"tool:{t.name}:{site}"] = partial(toolproc.start, self.paths, t, site)
        return out

    def _masters(self, site: str, index: int | None = None) -> list[DnsRole]:
        self._site_name(site)
        return [
            r
            for r in self.dns.roles()
            if r.site == site and r.kind == "master" and (index is None or r.index == index)
        ]

    def _running_record(self) -> dict[str, Any]:
        rec = self.record()
        if not rec:
            raise LabError(
                f"the geo lab of {self.site.site} is not up; start it with `handover lab up --geo`"
                " (and --site FILE for another geo site than config/sites/geo-lab.yaml)"
            )
        return rec

    def kill_site(self, name: str) -> str:
        """Lose a site at once: SIGKILL its tools, its databases and its masters (not its
        resolvers: they are the clients' side).

        Returns:
            What was done, in one sentence.
        """
        site = self._site_name(name)
        rec = self._running_record()
        refs = procs.refs_of(rec.get("procs", {}))
        keys = [k for k in self._site_keys(site) if k in refs]
        left = procs.kill(refs[k] for k in keys)
        with self._lock:
            for k in keys:
                rec["procs"].pop(k, None)
            rec["killed"] = sorted({*rec.get("killed", []), site})
            self._save(rec)
        if left:
            raise LabError(f"site {site}: still running after SIGKILL: {', '.join(left)}")
        return f"site {site} lost at once: killed {len(keys)} processes ({', '.join(keys)})"

    def restore_site(self, name: str, *, writable: bool = False) -> str:
        """Bring a site back from its data: its databases (crash recovery, binary log kept;
        read-only, as every server starts), its masters (zone and journal), its tools.

        Args:
            name: the site.
            writable: also make its databases writable (``read_only=OFF``), as an operator does
                when the site comes back still the active one.

        Returns:
            What was done, in one sentence.
        """
        site = self._site_name(name)
        rec = self._running_record()
        running = {k for k, r in procs.refs_of(rec.get("procs", {})).items() if r.running()}
        starts = {k: f for k, f in self._site_keys(site).items() if k not in running}
        dbs = {k: f for k, f in starts.items() if k.startswith("db:")}
        self._parallel(dbs, rec)
        if writable:
            for (tool, s), _ in self.dbs.items():
                if s == site:
                    self.sql(site, "SET GLOBAL read_only = OFF", tool=tool)
        for prefix in ("dns:", "tool:"):
            self._parallel({k: f for k, f in starts.items() if k.startswith(prefix)}, rec)
        with self._lock:
            rec["killed"] = [s for s in rec.get("killed", []) if s != site]
            self._save(rec)
        return (
            f"site {site} restored from its data: started {len(starts)} processes"
            + (f" ({', '.join(starts)})" if starts else "")
            + ("; its databases writable" if writable else "; its databases read-only")
        )

    def stop_master(self, site: str, index: int | None = None) -> str:
        """Stop a site's masters (SIGTERM; `index`: only that one).

        Returns:
            What was done, in one sentence.
        """
        roles = self._masters(site, index)
        rec = self._running_record()
        refs = procs.refs_of(rec.get("procs", {}))
        keys = [f"dns:{r.key}" for r in roles if f"dns:{r.key}" in refs]
        left = procs.stop(refs[k] for k in keys)
        with self._lock:
            for k in keys:
                rec["procs"].pop(k, None)
            self._save(rec)
        if left:
            raise LabError(f"still running after the stop: {', '.join(left)}")
        return f"stopped {len(keys)} master(s) of {site}: " + (
            ", ".join(r.label for r in roles) or "none ran"
        )

    def start_master(self, site: str, index: int | None = None) -> str:
        """Start a site's masters again from their zone and journal (`index`: only that one).

        Returns:
            What was done, in one sentence.
        """
        roles = self._masters(site, index)
        rec = self._running_record()
        running = {k for k, r in procs.refs_of(rec.get("procs", {})).items() if r.running()}
        todo = [r for r in roles if f"dns:{r.key}" not in running]
        self._parallel({f"dns:{r.key}": partial(self.dns.start, r) for r in todo}, rec)
        return f"started {len(todo)} master(s) of {site}" + (
            ": " + ", ".join(r.label for r in todo) if todo else " (all ran)"
        )

    # --- reading -------------------------------------------------------------------------------

    def db(self, site: str, tool: str | None = None) -> mariadb.DbServer:
        """The database server of `tool` (default: the first) at `site`."""
        t = self._tool(tool)
        try:
            return self.dbs[(t.name, self._site_name(site))]
        except KeyError:
            raise LabError(f"tool {t.name} does not run at {site}") from None

    def admin_password(self, tool: str | None = None) -> str:
        """The password of handover's database account."""
        return labsecrets.read(
            labsecrets.secret_file(self._tool(tool).database.password, "password")
        )

    def sql(
        self,
        site: str,
        statement: str,
        args: tuple[Any, ...] | None = None,
        *,
        tool: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on `site`'s database as handover's account (autocommit).

        Returns:
            Its rows (none for a statement that returns none).

        Raises:
            pymysql.MySQLError: the server refused it or did not answer.
        """
        t = self._tool(tool)
        db = self.db(site, t.name)
        with (
            contextlib.closing(
                mariadb.connect(
                    db.host,
                    db.port,
                    t.database.user,
                    self.admin_password(t.name),
                    database=t.database.database,
                    timeout_s=t.database.timeout_s,
                )
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(statement, args)
            return [tuple(r) for r in cur.fetchall()]

    def rows(self, site: str, *, tool: str | None = None) -> list[dict[str, Any]]:
        """The ``writes`` table of `site`'s database, oldest first."""
        return [
            {"id": r[0], "site": r[1], "epoch": r[2], "at": r[3]}
            for r in self.sql(
                site, "SELECT id, site, epoch, at FROM writes ORDER BY at, id", tool=tool
            )
        ]

    def client(
        self,
        site: str | None = None,
        *,
        tool: str | None = None,
        rate: float = 10.0,
        out: Path | None = None,
        process: bool = False,
    ) -> WriteLoad | WriteLoadProcess:
        """A load of writes through the tool's first name, resolved by `site`'s first resolver
        (default: the first site's); not started (`start()`, then `stop()` for the outcomes).

        Args:
            site: whose resolver the clients use.
            tool: the tool (default: the first).
            rate: writes per second.
            out: where the outcomes go (default: a new file in the state directory).
            process: run it as a process of its own rather than a thread.
        """
        t = self._tool(tool)
        s = self.geo.site(self._site_name(site or self.geo.sites[0].name))
        if not s.resolvers:
            raise LabError(f"site {s.name} has no resolver for clients")
        out = out or self.paths.root / "clients" / f"{uuid.uuid4().hex[:12]}.jsonl"
        cls = WriteLoadProcess if process else WriteLoad
        return cls(
            t.names[0], t.port, s.resolvers[0], labsecrets.ca_file(t, self.paths), out, rate=rate
        )

    def ca_file(self, tool: str | None = None) -> Path:
        """The CA certificate that signed the tool's certificates."""
        return labsecrets.ca_file(self._tool(tool), self.paths)

    def status(self) -> GeoStatus:
        """Per site: databases (up, read-only, replicating, lag), masters' and resolvers'
        answers, and each tool's health."""
        rec = self.record()
        return observe.status(self, rec)
