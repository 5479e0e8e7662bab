"""What every `handover` command shares: its consoles, the --site option, JSON output."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

DEFAULT_SITE = Path(__file__).resolve().parent.parent.parent / "config" / "sites" / "lab.yaml"

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def site_path(ref: str) -> str:
    """A --site value as a path: a file, or a site's name (``lab``) in the site directories.

    Raises:
        argparse.ArgumentTypeError: a name no site directory has (says which there are).
    """
    from config.loader import SiteConfigError, find_site, is_site_name

    if not is_site_name(ref) or Path(ref).exists():
        return ref
    try:
        return str(find_site(ref))
    except SiteConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc.problems[0])) from None


def site_arg(p: argparse.ArgumentParser) -> None:
    """The --site option (default: $HANDOVER_SITE, else the lab's site file)."""
    p.add_argument(
        "--site",
        type=site_path,
        default=os.environ.get("HANDOVER_SITE", str(DEFAULT_SITE)),
        help="site file, or a site's name in the site directories (default: $HANDOVER_SITE "
        "or config/sites/lab.yaml)",
    )


def print_json(data: Any) -> None:
    """Print data as indented JSON."""
    print(json.dumps(data, indent=2, default=str))
