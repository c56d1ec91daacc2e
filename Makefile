# Two commands for a fresh machine (see README): `make demo` runs the main job, `make test` the tests.
# Both create or reuse the project's virtual environment in .venv; torch (CPU build) is installed first.
# python3.11 when the machine has it under that name (pyproject.toml: requires-python 3.11 only).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip --disable-pip-version-check
LOCKS := requirements.lock requirements-infra.lock requirements-dev.lock
# The CPU build of torch, from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build and pulls several GB of
# nvidia wheels). A short timeout and no retries: where that index is unreachable and a local wheel or mirror
# (pip's find-links / index config) has the same version, it costs about a second, not minutes of retries.
TORCH := torch==2.13.0+cpu
TORCH_INDEX := https://download.pytorch.org/whl/cpu
TORCH_PIP_OPTIONS := --timeout 10 --retries 0 --extra-index-url $(TORCH_INDEX)

.PHONY: demo test test-fast lock check-python clean-venv

# Before anything is downloaded: the interpreter must be 3.11 (a 3.12 machine used to download everything,
# then fail on requires-python).
check-python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "error: Lockgate needs Python 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)." >&2; \
	  echo "  Install 3.11 (apt install python3.11 python3.11-venv, pyenv install 3.11, or" >&2; \
	  echo "  'uv python install 3.11' where GitHub is reachable), then: make PYTHON=/path/to/python3.11 ..." >&2; \
	  exit 1; }

# torch first, in its own step: its CPU wheel is not on PyPI, so it is not hash-checked with the locks. Then
# every lock, hash-checked (one resolution made them: they install together). pulumi-policy (the policy
# pack's SDK) pins an old protobuf that would break ray[serve]: it is installed without its resolver, and kept
# out of the locks. The project itself last, without dependencies (the locks carry them).
$(STAMP): pyproject.toml $(LOCKS)
	@$(MAKE) --no-print-directory check-python PYTHON=$(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH_PIP_OPTIONS) $(TORCH)
	$(PIP) install --quiet --require-hashes $(addprefix -r ,$(LOCKS))
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

# Re-resolve the locks after changing pyproject.toml (uv, from PyPI; see scripts/lock.py): versions already
# locked are kept unless the ranges exclude them. Where PyTorch's index is unreachable, point
# LOCKGATE_TORCH_FIND_LINKS at a directory holding the torch CPU wheel.
lock: $(STAMP)
	$(PIP) install --quiet uv==0.13.9
	$(PY) scripts/lock.py $(VENV)/bin/uv

clean-venv:
	rm -rf $(VENV) $(SCAN_VENV)
