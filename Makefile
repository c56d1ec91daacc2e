# Two commands for a fresh machine (see README): `make demo` runs the main job, `make test` the tests.
# Both create or reuse the project's virtual environment in .venv; torch (CPU build) is installed first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test test-fast lock clean-venv

# pulumi-policy (the policy pack's SDK) pins an old protobuf that would break ray[serve]: it is installed
# without its resolver, and kept out of the lock.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps pulumi-policy==1.21.0
	$(PIP) install --quiet --no-deps -e .
	touch $(STAMP)

# checkov (tests/infra/test_scan.py) in an environment of its own: its pins conflict with the project's.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-stamp
.PHONY: scan-env

$(SCAN_STAMP): requirements-scan.lock
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip --disable-pip-version-check install --quiet --no-deps -r requirements-scan.lock
	touch $(SCAN_STAMP)

scan-env: $(SCAN_STAMP)

demo: $(STAMP)
	$(VENV)/bin/lockgate demo

test: $(STAMP) $(SCAN_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

# A developer's quick loop: lint, format and every test not marked e2e (no Ray or MLflow started), about a
# minute. CI runs `make test`, which adds the type check and the end-to-end tests.
test-fast: $(STAMP) $(SCAN_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -m "not e2e"

# Refresh the lock from the current environment after changing pyproject.toml.
lock:
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch|lockgate|pulumi_policy)==' > requirements.lock

clean-venv:
	rm -rf $(VENV) $(SCAN_VENV)
