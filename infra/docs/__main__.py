"""`python -m infra.docs [--check]`: write the generated reference pages, or check them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from infra.docs import alerts, benchmarks, cli, metrics, site_file

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: each generated page, relative to docs/, and what writes it
PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli.page,
    "reference/site-file.md": site_file.page,
    "reference/metrics.md": metrics.page,
    "reference/alerts-and-events.md": alerts.page,
    "benchmarks/index.md": benchmarks.page,
    f"benchmarks/{benchmarks.TIMELINE}": benchmarks.timeline_svg,
}


def stale(docs: Path = DOCS) -> list[str]:
    """The generated pages whose committed text differs from what the code says now."""
    return [
        name
        for name, make in PAGES.items()
        if not (docs / name).exists() or (docs / name).read_text() != make()
    ]


def write(docs: Path = DOCS) -> list[str]:
    """Write every generated page; returns the ones that changed."""
    changed = stale(docs)
    for name in changed:
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(PAGES[name]())
    return changed


def main(argv: list[str] | None = None) -> int:
    """Write the pages, or with ``--check`` only say which are stale (exit 1)."""
    ap = argparse.ArgumentParser(prog="python -m infra.docs", description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail when a page is stale")
    args = ap.parse_args(argv)
    if args.check:
        old = stale()
        for name in old:
            print(f"docs/{name} is stale: run `python -m infra.docs`", file=sys.stderr)
        return 1 if old else 0
    for name in write():
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
