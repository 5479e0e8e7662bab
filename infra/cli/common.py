"""What every `handover` command shares: its consoles, the --site option, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

DEFAULT_SITE = Path(__file__).resolve().parent.parent.parent / "config" / "sites" / "lab.yaml"

#: stdout: handover's own lines may carry rich markup (``[green]ok[/green]``); text from outside
#: (paths, patterns, what a host or a daemon answered) goes through `say`, a `Text`, or
#: ``rich.markup.escape``
out = Console(highlight=False)
#: stderr: reads no markup at all, so every error prints exactly as it reads (a pattern's
#: ``[a-z0-9]``, a path's ``[/tmp/x]``); style with `error`, `note` or a `Text`
err = Console(stderr=True, highlight=False, markup=False)


def error(lead: object, detail: object = "") -> None:
    """Print a user-facing error on stderr: `lead` in red, then `detail`, each exactly as it
    reads (never taken for rich markup).

    Example:
        >>> error("invalid site file", "site: String should match pattern '^[a-z]$'")
    """
    text = Text(str(lead), style="red")
    if detail != "":
        text.append(f" {detail}")
    # never wrapped by rich (at 80 columns when not on a terminal): a path or a command in it
    # must stay whole to be copied; the terminal wraps what is too long for it
    err.print(text, soft_wrap=True)


def note(message: object) -> None:
    """Print a progress line on stderr (dim), exactly as it reads."""
    err.print(Text(str(message), style="dim"), soft_wrap=True)


def say(message: object, style: str = "") -> None:
    """Print a line on stdout exactly as it reads (text from outside: never rich markup)."""
    out.print(Text(str(message), style=style), soft_wrap=True)


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


def twin_args(p: argparse.ArgumentParser) -> None:
    """Where a site's twin lives: --octet (its addresses) and --state-dir."""
    p.add_argument(
        "--octet",
        type=int,
        default=240,
        choices=range(200, 255),
        metavar="200-254",
        help="the twin's addresses 127.0.OCTET.N (default 240)",
    )
    p.add_argument("--state-dir", help="the twin's state (default /var/tmp/handover-lab/SITE-twin)")


def sites_arg(p: argparse.ArgumentParser, what: str = "") -> None:
    """The repeatable --site option (`sites_of` gives its files; default: $HANDOVER_SITE, else
    the lab's site file)."""
    p.add_argument(
        "--site",
        type=site_path,
        action="append",
        default=None,
        help="site file, or a site's name in the site directories; repeat it for several "
        f"sites{what} (default: $HANDOVER_SITE or config/sites/lab.yaml)",
    )


def sites_of(args: argparse.Namespace) -> list[str]:
    """The site files of a repeatable --site (`sites_arg`), the default when none was given."""
    return list(args.site or [os.environ.get("HANDOVER_SITE", str(DEFAULT_SITE))])


def exit_on_sigterm() -> None:
    """Make SIGTERM end this command through its clean-up, as Ctrl-C does.

    A command that starts a lab (a bench, a rehearsal's twin) stops it in a ``finally`` block.
    Python's default SIGTERM ends the process without running one; and a Prefect flow running
    when the signal comes hands it back to the previous handler once it has marked the run
    Crashed. With this handler, either way a `SystemExit` (exit 143) unwinds the command.
    """

    def leave(signum: int, _frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def print_json(data: Any) -> None:
    """Print data as indented JSON."""
    print(json.dumps(data, indent=2, default=str))
