"""Every Kubernetes object both stacks declare, scanned by checkov (a kept scanner) on the rendered manifests.

The program's objects come from the mock harness (tests/infra/driver.py via conftest's program runs), are
written as YAML and scanned offline (`--skip-download`). A finding fails the test unless
infra/scan/checkov-suppressions.yaml accepts it with a one-line reason; a suppression nothing triggers any
more fails too, so the file never outlives its reasons. Checkov runs from its own environment (.venv-scan,
made by the Makefile: its pins conflict with the project's boto3, packaging and networkx).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import ROOT, program

SUPPRESSIONS = ROOT / "infra" / "scan" / "checkov-suppressions.yaml"
NOT_MANIFESTS = {"kubernetes:helm.sh/v3:Release", "pulumi:providers:kubernetes"}
# Upstream's CRDs (vendored unchanged) are schemas, not workloads.
SKIPPED_KINDS = {"CustomResourceDefinition"}


def checkov() -> str:
    """The checkov executable: $LOCKGATE_CHECKOV, the Makefile's .venv-scan, or one on PATH."""
    for candidate in (os.environ.get("LOCKGATE_CHECKOV"), str(ROOT / ".venv-scan" / "bin" / "checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("checkov")
    if found is None:
        pytest.fail("checkov is not installed: `make scan-env` (see the Makefile) or set LOCKGATE_CHECKOV")
    return found


def render(run_resources: list[dict[str, Any]], directory: Path) -> int:
    """Write each Kubernetes object as one YAML file; how many were written."""
    directory.mkdir(parents=True)
    count = 0
    for resource in run_resources:
        inputs = resource["inputs"]
        if not resource["type"].startswith("kubernetes:") or resource["type"] in NOT_MANIFESTS:
            continue
        if "kind" not in inputs or inputs["kind"] in SKIPPED_KINDS:
            continue
        (directory / f"{resource['name']}.yaml").write_text(yaml.safe_dump(inputs, sort_keys=True))
        count += 1
    return count


def scan(directory: Path) -> tuple[list[tuple[str, str]], int]:
    """(check id, resource) of every failed check, and how many checks passed."""
    done = subprocess.run(
        [checkov(), "-d", str(directory), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HOME": str(directory.parent)},
    )
    assert done.returncode in (0, 1), f"checkov did not run: {done.stderr[-2000:]}"
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]
    passed = sum(r["summary"]["passed"] for r in reports)
    return failed, passed


def suppressed(check_id: str, resource: str, rules: dict[str, Any]) -> bool:
    rule = rules.get(check_id)
    if rule is None:
        return False
    patterns = rule.get("only")
    return patterns is None or any(fnmatch.fnmatchcase(resource, pattern) for pattern in patterns)


def test_suppressions_each_have_a_one_line_reason() -> None:
    rules = yaml.safe_load(SUPPRESSIONS.read_text())
    assert rules, "the file lists what is accepted"
    for check_id, rule in rules.items():
        assert check_id.startswith("CKV_K8S_"), check_id
        reason = rule.get("reason", "")
        assert reason and "\n" not in reason.strip() and len(reason) <= 140, f"{check_id}: one line of reason"
        assert set(rule) <= {"reason", "only"}, f"{check_id}: unknown keys {set(rule)}"


def test_every_rendered_object_passes_checkov(program_runs, tmp_path) -> None:
    rules = yaml.safe_load(SUPPRESSIONS.read_text())
    unexplained: list[str] = []
    used: set[str] = set()
    for stack in ("dev", "aws"):
        directory = tmp_path / stack / "manifests"
        written = render(program(program_runs, stack).resources, directory)
        assert written >= 15, f"{stack}: expected the stack's objects, wrote {written}"
        failed, passed = scan(directory)
        assert passed > 100, f"{stack}: checkov ran its Kubernetes checks ({passed} passed)"
        for check_id, resource in failed:
            if suppressed(check_id, resource, rules):
                used.add(check_id)
            else:
                unexplained.append(f"{stack}: {check_id} {resource}")
    assert unexplained == [], "findings without a suppression:\n" + "\n".join(unexplained)
    assert used == set(rules), f"suppressions nothing triggers any more: {sorted(set(rules) - used)}"
