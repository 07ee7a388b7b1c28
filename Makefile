# bgworkers: build, check and test.
#
#   make test    the whole suite on a fresh Debian machine (as root): system
#                packages, .venv, ruff, mypy, pytest under coverage, then the soak test
#   make soak    the soak test alone (tests/soak, not in a bare `pytest`): three replicas
#                for about three minutes, a kill, a freeze, a database restart; prints figures
#   make venv    just .venv with the package and its test extras (editable)
#   make demo    demo data, a database check, one tick of three jobs, then the daemon
#                in the foreground (Ctrl-C stops it)
#   make lint    ruff and mypy
#   make clean   caches, coverage data, build output, demo data (distclean: also .venv)
#   make install    (root) install or upgrade the service: build packages, /opt/bgworkers/venv,
#                   the unit, /etc/bgworkers (kept if present), /usr/local/bin/bgworkers
#   make uninstall  (root) remove what install added but /etc/bgworkers and /var/lib/bgworkers
#
# Knobs: PYTHON (interpreter for the venv, default python3.11 else python3),
#        PYTEST_ARGS (e.g. make test PYTEST_ARGS='-m "not mariadb" -x'; -n 0: no workers),
#        SOAK_ARGS (pytest arguments of the soak test, in make test and make soak).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.NOTPARALLEL:
.DEFAULT_GOAL := test

# Recursively expanded on purpose: evaluated when used, i.e. after the system
# packages (which may bring python3) are installed.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bgworkers-installed
LINT_PATHS := bgworkers tests bench
PYTEST_ARGS ?=
SOAK_ARGS ?=

.PHONY: test soak venv system-deps demo lint clean distclean install uninstall

test: system-deps venv
	@status=0; \
	echo "== ruff check and ruff format --check $(LINT_PATHS)"; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	echo "== mypy"; \
	$(BIN)/mypy || status=1; \
	echo "== pytest (under coverage, workers as pyproject.toml sets them)"; \
	$(BIN)/coverage erase; \
	$(BIN)/python -m pytest --cov=bgworkers --cov-branch --cov-report= $(PYTEST_ARGS) || status=1; \
	echo "== coverage"; \
	$(BIN)/coverage report --skip-empty || true; \
	echo "== soak test (three replicas, about 3 minutes)"; \
	$(BIN)/python -m pytest tests/soak -n 0 -s $(SOAK_ARGS) || status=1; \
	if [ $$status -eq 0 ]; then echo "make test: OK"; else echo "make test: FAILED (see above)"; fi; \
	exit $$status

soak: system-deps venv
	$(BIN)/python -m pytest tests/soak -n 0 -s $(SOAK_ARGS)

system-deps:
	@bash tests/harness/install-system-deps.sh

venv: $(STAMP)

$(BIN)/python:
	@py="$(PYTHON)"; \
	"$$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	  || echo "warning: $$py is not Python 3.11 (pyproject requires >=3.11,<3.12)" >&2; \
	echo "creating $(VENV) with $$py"; \
	"$$py" -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

demo: system-deps venv
	$(BIN)/bgworkers demo-data --reset
	$(BIN)/bgworkers db check
	$(BIN)/bgworkers run-once serial_consistency
	$(BIN)/bgworkers run-once serial_outbox
	$(BIN)/bgworkers run-once dashboard_fast
	$(BIN)/bgworkers jobs
	$(BIN)/bgworkers run

lint: venv
	@status=0; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

# Works from a read-only tree: deploy/install.sh builds in a temporary copy.
install:
	@bash deploy/install.sh install

uninstall:
	@bash deploy/install.sh uninstall

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.* htmlcov \
	       build dist *.egg-info demo-data
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
