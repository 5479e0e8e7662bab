"""Adapters: the small interfaces through which handover reaches the systems it drives.

* `ssh`: commands on the site's hosts (paramiko, host keys checked, every wait bounded).
* `db`: list and kill the database sessions of a machine (PostgreSQL, MariaDB/MySQL, Oracle).
* `slack`: the site's Slack client and a notifier that never fails a procedure.

Each module states its contract in its docstring. Nothing here imports Prefect; the verbs in
`tasks` use the adapters, and the flows use the verbs.
"""
