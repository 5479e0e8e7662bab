"""The configuration files of the control plane's parts that are not Prefect's: HAProxy's (the
balancer in front of the API servers) and Redis's. `infra.control_plane` writes them for a plane
on one machine; `handover install --role balancer` writes HAProxy's for a site (pure text, no
process started here)."""

from __future__ import annotations

from pathlib import Path


def haproxy_config(
    bind_host: str,
    bind_port: int,
    servers: list[tuple[str, int]],
    metrics: tuple[str, int] | None = None,
) -> str:
    """The balancer's configuration: HTTP mode, each API server checked at `/api/health` every
    second (out after two failures, back after two successes, then given its share of the
    requests over 10 s), a refused connection retried on another server, websockets (Prefect's
    event streams) kept open for an hour.

    Args:
        bind_host: the address clients connect to.
        bind_port: its port.
        servers: each API server's address and port.
        metrics: where HAProxy's own Prometheus exporter answers `/metrics` (each API server's
            state: `haproxy_server_status`), or None for none.
    """
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout tunnel 3600s",
        "    retries 3",
        "    option redispatch 1",
        "frontend prefect",
        f"    bind {bind_host}:{bind_port}",
        "    default_backend prefect_api",
    ]
    if metrics is not None:
        lines += [
            "frontend metrics",
            f"    bind {metrics[0]}:{metrics[1]}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
        ]
    lines += [
        "backend prefect_api",
        "    balance roundrobin",
        "    option httpchk GET /api/health",
        "    http-check expect status 200",
        # a server back from a restart gets its share of requests over 10 s, not at once:
        # its first requests are slower (imports, the database pool)
        "    default-server inter 1s fall 2 rise 2 slowstart 10s",
    ]
    lines += [f"    server api-{i} {h}:{p} check" for i, (h, p) in enumerate(servers, start=1)]
    return "\n".join(lines) + "\n"


def redis_config(port: int, directory: Path, password: str) -> str:
    """Redis's configuration: loopback only, a password, an append-only file synced before each
    write is answered (a lease Redis granted survives its crash: with a sync every second, one
    granted in the last second was lost, and its service could be given to a second holder), no
    snapshots, in the foreground."""
    return (
        f"port {port}\n"
        "bind 127.0.0.1\n"
        "protected-mode yes\n"
        f"requirepass {password}\n"
        f"dir {directory}\n"
        "appendonly yes\n"
        "appendfsync always\n"
        'save ""\n'
        "daemonize no\n"
        "loglevel warning\n"
    )
