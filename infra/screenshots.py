"""`make screenshots`: the documentation's pictures, taken from a real run with headless Chromium.

A lab of its own (addresses 127.0.246.x, never the operator's lab) comes up with its load; a
Prefect server of its own starts on its embedded SQLite; the fake Slack Web API takes the run's
thread. A pipelined clean move runs in this process as an operator's `handover run` would, and
asks for approval in Slack: the approval request is pictured as the fake Slack shows it
(``/_fake/view``), then approved. Once the move has ended, the Prefect UI's page of the run (its
graph) and its report artifact are pictured. The pictures go to docs/images/.

Chromium is driven over its DevTools protocol (a websocket, `websockets` from Prefect's own
dependencies): the Prefect UI asks for the server's auth string, which is put where the UI keeps
it (its local storage) before the pages are opened.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
BROWSERS = ("chromium-headless-shell", "chromium")
WIDTH, HEIGHT = 1440, 900


class ScreenshotError(RuntimeError):
    """A picture could not be taken; says which and why."""


def find_browser() -> str | None:
    """The headless Chromium on PATH, if any."""
    return next((p for b in BROWSERS if (p := shutil.which(b))), None)


class Browser:
    """One headless Chromium, one page, driven over the DevTools protocol."""

    def __init__(self, binary: str, work: Path) -> None:
        from infra.ports import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                f"--remote-debugging-port={self.port}",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={work / 'chromium'}",
                "--no-sandbox",  # root, in a container: Chromium's sandbox needs user namespaces
                "--no-first-run",
                "--hide-scrollbars",
                "--enable-unsafe-swiftshader",  # the run graph draws with WebGL, in software
                f"--window-size={WIDTH},{HEIGHT}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=2) as r:
                    targets = json.load(r)
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise ScreenshotError(f"{binary} did not open its DevTools port") from None
                time.sleep(0.2)
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        n = next(self._ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == n:
                if "error" in msg:
                    raise ScreenshotError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def evaluate(self, js: str) -> Any:
        """The value of a JavaScript expression in the page."""
        res = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def goto(self, url: str, ready: str = "true", timeout: float = 60, settle: float = 1.0) -> None:
        """Open `url`; wait until the page has loaded and `ready` (JavaScript) is true."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not (self.evaluate("document.readyState") == "complete" and self.evaluate(ready)):
            if time.monotonic() > deadline:
                shown = " ".join(str(self.evaluate("document.body.innerText") or "").split())
                raise ScreenshotError(
                    f"{url}: not ready after {timeout:.0f} s ({ready}); the page shows: "
                    f"{shown[:400]!r}"
                )
            time.sleep(0.3)
        time.sleep(settle)  # animations, fonts, the graph's first frames

    def shot(self, path: Path, *, whole_page: bool = False) -> Path:
        """The viewport (or the whole page) as a PNG at `path`."""
        params: dict[str, Any] = {"format": "png"}
        if whole_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": WIDTH, "height": size["height"], "scale": 1},
            )
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Stop the browser (its process group)."""
        from infra.bench.alert import stop_groups

        with contextlib.suppress(AttributeError):  # the websocket was never opened
            self.ws.close()
        stop_groups([self.proc], grace_s=10)


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise ScreenshotError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)
    return value


def take(out: Path = IMAGES, progress: Callable[[str], None] = print) -> list[Path]:
    """Take the pictures; returns the files written.

    Raises:
        ScreenshotError: no browser, or a page never became ready (names it).
    """
    binary = find_browser()
    if binary is None:
        raise ScreenshotError(
            "no headless Chromium: apt-get install chromium-headless-shell (make screenshots "
            "does it when run as root)"
        )
    from config.loader import load_site
    from infra import prefect_server
    from infra.fakeslack import FakeSlack
    from infra.lab.derive import derive_site_file
    from infra.lab.lab import Lab
    from infra.ports import free_port

    work = Path(tempfile.mkdtemp(prefix="handover-shots-"))
    site_file = derive_site_file(
        ROOT / "config" / "sites" / "lab.yaml",
        work / "shots.yaml",
        name="shots",
        octet=246,
        db_port=20246,
        state_dir=Path(f"/var/tmp/handover-lab/shots-{os.getpid()}"),
    )
    site = load_site(site_file)
    lab = Lab(site)
    home = work / "prefect"
    written: list[Path] = []
    token, secret = "xoxb-screenshots", "screenshots-signing-secret-0123456789"
    os.environ.update({"HANDOVER_SLACK_BOT_TOKEN": token, "HANDOVER_SLACK_SIGNING_SECRET": secret})
    browser: Browser | None = None
    try:
        progress("lab up (its own addresses, 127.0.246.x)")
        lab.up(progress=progress)
        url, _ = prefect_server.ensure_server("127.0.0.1", free_port(), home=home)
        os.environ["PREFECT_API_URL"] = url
        auth = prefect_server.api_auth(home)
        with FakeSlack(tokens={token}) as fake:
            os.environ["HANDOVER_SLACK_API_URL"] = fake.base_url
            browser = Browser(binary, work)
            run_id = _move_with_approval(site_file, fake, browser, out, written, progress)
            ui = url.removesuffix("/api")
            # the UI asks for the auth string and keeps it in its local storage
            browser.goto(ui + "/dashboard", settle=0)
            browser.evaluate(f"localStorage.setItem('prefect-password', btoa({json.dumps(auth)}))")
            progress("the Prefect UI's page of the run, its graph")
            browser.goto(
                f"{ui}/runs/flow-run/{run_id}",
                ready="document.querySelector('canvas') !== null "
                "&& document.body.innerText.includes('Completed')",
                settle=4,
            )
            written.append(browser.shot(out / "run-graph.png"))
            artifact = _report_artifact(run_id)
            progress("the run's report artifact")
            browser.goto(
                f"{ui}/artifacts/artifact/{artifact}",
                ready="document.body.innerText.includes('clean-move-report')",
                settle=2,
            )
            written.append(browser.shot(out / "report-artifact.png"))
    finally:
        if browser is not None:
            browser.close()
        prefect_server.stop_server(home)
        try:
            lab.down()
        finally:
            lab.remove_state()
            shutil.rmtree(work, ignore_errors=True)
    return written


def _move_with_approval(
    site_file: Path,
    fake: Any,
    browser: Browser,
    out: Path,
    written: list[Path],
    progress: Callable[[str], None],
) -> str:
    """A pipelined clean move that asks for approval in Slack: picture the request, approve it,
    let the move finish; returns the run's id."""
    from flows.approval import resume_with_input
    from flows.clean_move import CleanMoveResult, clean_move

    base = fake.base_url.removesuffix("/api/")
    seen: dict[str, str] = {}
    failure: list[BaseException] = []

    def approve() -> None:
        try:

            def asked() -> str | None:
                for m in fake.record()["messages"]:
                    for b in m.get("blocks") or []:
                        if b.get("block_id") == "approval":
                            return str(b["elements"][0]["value"])
                return None

            run_id = _wait("the approval request in Slack", asked, 120)
            seen["run_id"] = run_id
            progress("the approval request, as the fake Slack shows it")
            browser.goto(f"{base}/_fake/view", ready="document.body.innerText.includes('Approve')")
            written.append(browser.shot(out / "slack-approval.png", whole_page=True))
            resume_with_input(
                run_id, run_input={"decision": "approve", "who": "labops", "comment": "go"}
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, after the run
            failure.append(exc)

    helper = threading.Thread(target=approve, daemon=True)
    helper.start()
    progress("a pipelined clean move fts101 -> fts102, asking for approval in Slack")
    result = clean_move(
        str(site_file),
        "fts101",
        "fts102",
        mode="pipelined",
        pause_for_approval=True,
        requested_by="make screenshots",
    )
    helper.join(30)
    if failure:
        raise ScreenshotError(f"the approval's picture: {failure[0]}") from failure[0]
    if not isinstance(result, CleanMoveResult) or result.status != "completed":
        raise ScreenshotError(f"the move did not complete: {getattr(result, 'summary', result)}")
    return seen["run_id"]


def _report_artifact(run_id: str) -> str:
    """The id of the run's report artifact (what it did, where each agent runs, the downtime)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    reports = [a for a in found if a.key == "clean-move-report"]
    if not reports:
        raise ScreenshotError(f"run {run_id} has no clean-move-report artifact")
    return str(reports[-1].id)


def main() -> int:
    """`python -m infra.screenshots`: take the pictures; 0 when all were written."""
    try:
        for path in take():
            print(f"wrote {path.relative_to(ROOT)}")
    except ScreenshotError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
