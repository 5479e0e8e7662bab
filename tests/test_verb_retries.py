"""The one retry rule of the verbs run as Prefect tasks: transient SSH errors are retried,
anything else ends the task at once (a real Prefect server; the verb's body is replaced)."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

import tasks.verbs
from config.loader import load_site
from flows.plans.verbs import SetActive
from tasks.adapters.ssh import PermanentSshError, TransientSshError
from tasks.outcome import StepFailed, StepResult, now
from tasks.remote import SiteShell
from tasks.run_context import RunContext
from tests.conftest import LAB_SITE

STEP = SetActive(id="t/set-active", host="fts101", channels=["CERN-CERN"])


def _flaky(errors: list[BaseException], calls: list[int]) -> Any:
    def set_channels(
        site: Any, host: str, channels: list[str], state: str, read_first: bool = True
    ) -> StepResult:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        t = now()
        return StepResult(host=host, verb="set", sentence="ok", started_at=t, ended_at=t)

    return set_channels


@flow
def _run_one() -> str:
    return str(tasks.verbs.run_step(RunContext(SiteShell(load_site(LAB_SITE))), STEP).sentence)


def test_transient_errors_are_retried(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    errors: list[BaseException] = [
        TransientSshError("fts101: connection refused", host="fts101"),
        TransientSshError("fts101: connection refused", host="fts101"),
    ]
    monkeypatch.setattr(tasks.verbs, "set_channels", _flaky(errors, calls))
    assert _run_one() == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        PermanentSshError("fts101: host key changed", host="fts101"),
        StepFailed("fts101: CERN-CERN still Inactive", host="fts101", verb="set-active"),
    ],
    ids=["permanent-ssh", "post-condition"],
)
def test_other_errors_end_the_task_at_once(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(tasks.verbs, "set_channels", _flaky([error], calls))
    with pytest.raises(type(error)):
        _run_one()
    assert len(calls) == 1
