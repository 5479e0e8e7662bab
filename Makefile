# The two commands of the README: `make demo` and `make test`. Each installs what it needs:
# Debian packages via apt-get when root (infra/system-deps.sh), Python packages in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test test-serial check durations deps system-deps lint typecheck lab-down lock docs docs-check screenshots

demo: deps
	$(PY) -m infra.demo

# the whole suite, as two pytest processes at once (tests/run-groups); without root it runs
# what it can and fails, saying how many tests need root; `make test-serial` runs it as one
test: deps lint typecheck docs-check
	PY=$(PY) bash tests/run-groups

# for every edit: lint and the tests that need no root and no server (the `unit` tier)
check: $(VENV)/.installed lint
	$(PY) -m pytest -q -p no:cacheprovider -m unit

# the whole suite, recording each module's time in tests/durations.json (how run-groups splits it)
durations: deps
	HANDOVER_RECORD_DURATIONS=1 PY=$(PY) bash tests/run-groups

test-serial: deps lint typecheck
	$(PY) -m pytest -q

# the documentation's pictures, from a real run on a lab of their own (infra/screenshots.py);
# headless Chromium from Debian, installed here when root
screenshots: deps
	@if ! command -v chromium-headless-shell >/dev/null || \
	    [ ! -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell fonts-noto-color-emoji; \
	  else \
	    echo "make screenshots needs: apt-get install chromium-headless-shell fonts-noto-color-emoji" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(PY) -m infra.screenshots

deps: system-deps $(VENV)/.installed

system-deps:
	@bash infra/system-deps.sh

# every package at the version of requirements.lock (what CI tested), never a newer release
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# requirements.lock anew from pyproject.toml: the newest releases its bounds allow, frozen
LOCK_VENV := /tmp/handover-lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q '.[dev]'
	{ sed -n '1,/^# `make lock`/p' requirements.lock; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable --exclude handover; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf $(LOCK_VENV) build

# ruff, and the layers' contracts (pyproject.toml's [tool.importlinter]: nothing imports upward)
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(PY) -m mypy

# the documentation site: its generated reference pages match the code, and it builds with no
# warning (a broken link, a page missing from the navigation)
docs-check: $(VENV)/.installed
	$(PY) -m infra.docs --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# the documentation site at http://127.0.0.1:8000 while you edit it
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

lab-down: $(VENV)/.installed
	$(VENV)/bin/handover lab down
