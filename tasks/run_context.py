"""What a verb may use of the run that executes its step (one per execution of a plan).

Most verbs need the run's SSH client alone. The verbs that wait on the run rather than on a
host use its shared parts: the one drain monitor that polls the drained host for every channel,
the moments the run set channels Inactive (a drain counts from them), the reader of the running
transfers' remaining times shared by the cut-overs, the run's cancel event and its bounds.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from tasks.cutover import EtaReader
from tasks.remote import SiteShell

if TYPE_CHECKING:
    from config.site import Site
    from tasks.drain import DrainMonitor


class RunContext:
    """The run's shared parts, as the executor keeps them.

    Args:
        shell: the run's SSH client.
        cancel: set when the run is cancelled (waits end at once).
        poll_s: how often the run's monitors look.
        drain_timeout_s: the bound of every drain wait.
        force: go on after a drain timeout (the running transfers lose their state).
        monitor: the run's drain monitor (None: the plan waits for no drain).
    """

    def __init__(
        self,
        shell: SiteShell,
        *,
        cancel: threading.Event | None = None,
        poll_s: float = 2.0,
        drain_timeout_s: float = 900.0,
        force: bool = False,
        monitor: DrainMonitor | None = None,
    ) -> None:
        self.shell = shell
        self.cancel = cancel or threading.Event()
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self.force = force
        self.monitor = monitor
        #: when the run set each channel Inactive (monotonic): a drain counts from there
        self.inactive_mono: dict[str, float] = {}
        #: when the plan began acting (monotonic): a cut-over's window counts from it
        self.acting_since = time.monotonic()
        self._eta: EtaReader | None = None
        self._eta_guard = threading.Lock()

    @property
    def site(self) -> Site:
        """The run's site."""
        return self.shell.site

    def eta(self) -> EtaReader:
        """The run's reader of the running transfers' remaining times (made on first use)."""
        with self._eta_guard:
            if self._eta is None:
                self._eta = EtaReader(self.site, max_age_s=min(self.poll_s, 0.5))
            return self._eta
