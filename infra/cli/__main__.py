"""`python -m infra.cli`: the `handover` command line."""

import sys

from infra.cli import main

sys.exit(main())
