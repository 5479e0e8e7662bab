"""Where rehearsals are kept: one Prefect Variable per site and procedure, the last rehearsal's
record (`flows.plans.rehearsal.RehearsalRecord`), so that a run on any worker can check it."""

from __future__ import annotations

import re

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists
from pydantic import ValidationError

from flows.plans.rehearsal import RehearsalRecord


def variable_name(site: str, procedure: str) -> str:
    """The Variable of a site's last rehearsal of a procedure (Prefect's names: lowercase
    letters, digits, ``_`` and ``-``)."""
    return "rehearsal_" + re.sub(r"[^a-z0-9_]+", "_", f"{site}__{procedure}".lower())


def read_rehearsal(site: str, procedure: str) -> RehearsalRecord | None:
    """The site's last rehearsal of `procedure` (None: none, or a record that does not read)."""
    with get_client(sync_client=True) as client:
        var = client.read_variable_by_name(variable_name(site, procedure))
    if var is None:
        return None
    try:
        return RehearsalRecord.model_validate_json(str(var.value))
    except ValidationError:
        return None


def keep_rehearsal(record: RehearsalRecord) -> None:
    """Keep `record` as the site's last rehearsal of its procedure."""
    name = variable_name(record.site, record.procedure)
    value = record.model_dump_json()
    with get_client(sync_client=True) as client:
        try:
            client.create_variable(VariableCreate(name=name, value=value))
        except ObjectAlreadyExists:
            client.update_variable(VariableUpdate(name=name, value=value))
