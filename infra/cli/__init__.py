"""The `handover` command line.

Each module holds its commands' options next to their handlers (`register(sub)`):

* `sitefile`: check-config, init, snapshot
* `check`: check remap (a geo tool's readiness to be remapped)
* `status`: the replicated tools' status (where each is active, lag, DNS masters)
* `lab`: lab up|down|status|score|fault|heal|load|exec|twin
* `procedures`: run clean-move|emergency-move|fence-host|..., rehearse clean-move
* `service`: service start|stop|status|monitor (one host's agents, OCF exit codes)
* `services`: serve, deploy, gateway, alert, fake-slack, server
* `bench`: bench lab|clean-move|alert|switch|rolling-upgrade|hagd|faults
* `hagd`: hagd run|status|takeover|giveup|reset
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from config.loader import SiteConfigError
from infra.cli import (
    bench,
    check,
    hagd,
    install,
    lab,
    procedures,
    service,
    services,
    sitefile,
    status,
)
from infra.cli.common import DEFAULT_SITE, err, error
from tasks.secret_blocks import use_prefect_secret_blocks

__all__ = ["DEFAULT_SITE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    ap = argparse.ArgumentParser(prog="handover", description="The `handover` command line.")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in (
        sitefile,
        check,
        status,
        lab,
        procedures,
        service,
        services,
        install,
        bench,
        hagd,
    ):
        module.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `handover` console script."""
    args = build_parser().parse_args(argv)
    use_prefect_secret_blocks()  # every command may resolve a {prefect_secret: ...} reference
    try:
        return int(args.func(args))
    except SiteConfigError as exc:
        error("invalid site file", exc)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
