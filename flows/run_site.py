"""The site a run works on: any file for a run started at the site's terminal, reviewed files
only for a run created through the Prefect API (see `config.loader.load_reviewed_site`)."""

from __future__ import annotations

from config.loader import load_reviewed_site, load_site_ref
from config.site import Site
from flows import progress
from tasks.secret_blocks import use_prefect_secret_blocks


def load_run_site(site_file: str) -> Site:
    """The run's site, from a path or a site's name (``lab``: ``lab.yaml`` in the site
    directories).

    Raises:
        SiteConfigError: the file is invalid, or (for a run created through the API) outside
            the site directories.
    """
    use_prefect_secret_blocks()  # the site's {prefect_secret: ...} references resolve in a run
    if progress.created_through_the_api():
        return load_reviewed_site(site_file)
    return load_site_ref(site_file)
