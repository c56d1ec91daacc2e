"""Write the lock files: one resolution of every extra, split by use, with hashes (``make lock``).

One resolution (runtime + ``server`` + ``infra`` + ``dev``) fixes every version, so the three files always
install together; each file then holds its layer's packages only: ``requirements.lock`` the runtime (what
the code image carries), ``requirements-infra.lock`` the Pulumi program's, ``requirements-dev.lock`` the
tests' and checkers'. torch is resolved as the CPU build but left out of every file: it is installed in its
own step first (the Makefile, the Dockerfile), since its CPU wheel comes from PyTorch's index, not PyPI.
Existing lock files are preferred, so a re-lock changes only what pyproject.toml's ranges force.

Usage: ``python scripts/lock.py [UV]``; ``LOCKGATE_TORCH_FIND_LINKS=DIR`` resolves torch from a directory of
wheels instead of PyTorch's CPU index (a machine that cannot reach it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0+cpu"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
LAYERS = (
    ("requirements.lock", ["server"]),
    ("requirements-infra.lock", ["infra"]),
    ("requirements-dev.lock", ["dev"]),
)
"""Each lock file and the extras it adds to the runtime dependencies, lowest layer first."""
HEADER = (
    "# Made by `make lock` (scripts/lock.py) from pyproject.toml; do not edit. torch is installed apart.\n"
)


def _name(line: str) -> str:
    return re.split(r"[=<>\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-")


def _blocks(text: str) -> dict[str, str]:
    """The requirement blocks of a compiled file (a pin line and its hash lines), by normalised name."""
    blocks: dict[str, str] = {}
    current = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            continue
        if not line[0].isspace():
            current = _name(line)
            blocks[current] = ""
        blocks[current] += line
    return blocks


def main(uv: str = "uv") -> None:
    """Resolve everything once, then write each layer's lock file without the layers below it."""
    find_links = os.environ.get("LOCKGATE_TORCH_FIND_LINKS")
    torch_source = (
        ["--find-links", find_links]
        if find_links
        else ["--extra-index-url", TORCH_INDEX, "--index-strategy", "unsafe-best-match"]
    )
    with tempfile.TemporaryDirectory() as scratch:
        override = Path(scratch) / "torch.txt"
        override.write_text(TORCH + "\n")
        everything = Path(scratch) / "all.txt"
        # uv prefers the versions already in its output file: seed it with the current locks.
        everything.write_text(
            "".join((ROOT / name).read_text() for name, _ in LAYERS if (ROOT / name).exists())
        )
        common = [uv, "pip", "compile", "--quiet", "--no-header", *PLATFORM, "--override", str(override)]
        subprocess.run(
            [*common, *torch_source, "pyproject.toml", "--all-extras", "-o", str(everything)],
            cwd=ROOT,
            check=True,
        )
        below: set[str] = {"torch"}
        for name, extras in LAYERS:
            layer = Path(scratch) / name
            extra_args = [arg for extra in extras for arg in ("--extra", extra)]
            subprocess.run(
                [*common, *torch_source, "pyproject.toml", *extra_args, "-c", str(everything)]
                + ["--generate-hashes", "--no-annotate", "-o", str(layer)],
                cwd=ROOT,
                check=True,
            )
            blocks = {key: block for key, block in _blocks(layer.read_text()).items() if key not in below}
            (ROOT / name).write_text(HEADER + "".join(blocks[key] for key in sorted(blocks)))
            below |= set(blocks)
            print(f"{name}: {len(blocks)} packages")


if __name__ == "__main__":
    main(*sys.argv[1:])
