"""Shared helpers for the monitoring tests: repository paths and the Prometheus tools from Debian."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yaml"))
RULE_TEST_FILES = sorted((MONITORING / "tests").glob("*.yaml"))
DASHBOARD_FILES = sorted((MONITORING / "dashboards").glob("*.json"))
ALERTMANAGER_CONFIG = MONITORING / "alertmanager.yaml"
INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager"


def require_tool(*names: str) -> str:
    """The path of the first tool found on PATH, or skip the test saying how to install it."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"{' / '.join(names)} is not installed ({INSTALL_HINT})")


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, bounded in time, capturing stdout and stderr together."""
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
