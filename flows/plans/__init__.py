"""The pure core: the snapshot model, command building, and every procedure's planner.

A planner is a function from (site, snapshot, request) to a plan; compensation is a function from
(plan, ledger). Modules here import the standard library, pydantic and `config` only, so they load
without Prefect, paramiko, slack_sdk or a database driver, and are tested from recorded states.

* `snapshot`: the live state model and its parsers.
* `argv`, `steps`: exact command lines, and the steps that run them.
* `model`: steps, chains, phases, plans, the ledger and remedies.
* `clean_move`, `emergency_move`, `fence_host`: one planner per procedure.
"""
