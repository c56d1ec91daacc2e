"""A consistent copy of serving/ taken at start, so every replica runs the same code during the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .processes import progress
from .settings import REPO

SNAPSHOT_CHECK = """
from serving.render import render_serve_config
from serving.spec import ModelRef, RouterConfig, ServingSpec, TrafficSpec
import serving.app, serving.deploy
ref = lambda v: ModelRef(name="m", version=v)
router = RouterConfig(champion=ref("1"), candidate=ref("2"), traffic=TrafficSpec(candidate_weight=10))
render_serve_config(ServingSpec(), router)
print(serving.app.__file__)
"""


def snapshot_serving(destination: Path, attempts: int = 6) -> dict[str, Any]:
    """Copy serving/ as it is now and check it imports and renders (the tree may be mid-edit); retried."""
    import hashlib

    last = ""
    for _ in range(attempts):
        target = destination / "serving"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(REPO / "serving", target, ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run(
            [sys.executable, "-c", SNAPSHOT_CHECK],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=destination,
            env={**os.environ, "PYTHONPATH": str(destination)},
        )
        if check.returncode == 0 and check.stdout.strip().startswith(str(destination)):
            digest = hashlib.sha256()
            for path in sorted(target.rglob("*.py")):
                digest.update(path.relative_to(target).as_posix().encode() + b"\0" + path.read_bytes())
            return {
                "path": str(target),
                "sha256": digest.hexdigest(),
                "files": len(list(target.rglob("*.py"))),
            }
        last = (check.stderr or check.stdout)[-1500:]
        progress("serving/ does not import or render as it stands (being edited?): retrying in 10 s")
        time.sleep(10)
    raise RuntimeError(f"no consistent snapshot of serving/ after {attempts} tries:\n{last}")


def git_state() -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10, cwd=REPO).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "head": git("rev-parse", "HEAD").strip(),
        "dirty": git("status", "--short", "serving").splitlines(),
    }
