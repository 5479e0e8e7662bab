"""The documentation's reference pages, generated from the code (`python -m infra.docs`).

Each page is written from what the code itself declares, never by hand: the command line from
its argument parser (`cli`), the site file from its pydantic models (`site_file`), the metrics
from the exporter's families (`metrics`), the alerts and events from the gateway's and the
deployments' (`alerts`). `python -m infra.docs` writes them under
`docs/reference/`; `python -m infra.docs --check` (and `tests/test_docs.py`) fails when a
committed page differs from what the code says now.
"""
