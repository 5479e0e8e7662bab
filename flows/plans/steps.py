"""The commands of the site's profile as a plan shows them: filled and quoted, as they will run."""

from __future__ import annotations

from config.site import Site
from flows.plans.argv import shell_command


def command(site: Site, name: str, **values: str) -> str:
    """One command of the site's profile, filled and quoted, as it will run."""
    return shell_command(site.commands.argv(name, **values))


def db_kind(site: Site) -> str:
    """The kind of the site's service database, as a plan names it."""
    return site.database.kind if site.database else "database"
