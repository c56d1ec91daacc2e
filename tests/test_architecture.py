"""The shape of the code: imports flow one way with no cycles, and each shared word is defined once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.architecture import measure

ROOT = Path(__file__).resolve().parents[1]
FIGURES = measure(ROOT)
HEAVY = ("pandas", "scipy", "ray", "mlflow", "torch", "sklearn", "pyarrow")


def test_no_import_cycles_even_counting_lazy_imports() -> None:
    assert FIGURES["cycles_module_level"] == [], (
        f"module-level import cycles: {FIGURES['cycles_module_level']}"
    )
    assert FIGURES["cycles_with_lazy_imports"] == [], (
        f"cycles through function-local imports: {FIGURES['cycles_with_lazy_imports']}"
    )


def test_imports_flow_one_way_between_packages() -> None:
    assert FIGURES["layer_breaches"] == [], f"imports against the layering: {FIGURES['layer_breaches']}"


def test_each_shared_word_is_defined_once_and_only_in_contracts() -> None:
    definitions = FIGURES["shared_definitions"]
    assert isinstance(definitions, dict)
    twice = {word: places for word, places in definitions.items() if len(places) > 1}
    assert not twice, f"defined more than once: {twice}"
    outside = {w: p for w, p in definitions.items() if not all(place.startswith("contracts/") for place in p)}
    assert not outside, f"shared words defined outside contracts/: {outside}"


def test_environment_variable_names_are_written_only_where_they_are_defined() -> None:
    uses = FIGURES["shared_literal_uses"]
    assert isinstance(uses, dict)
    repeated = {word: count for word, count in uses.items() if word.startswith("LOCKGATE_") and count > 1}
    assert not repeated, (
        f"LOCKGATE_* names written as literals more than once (use contracts.settings): {repeated}"
    )


def test_validating_a_pipeline_file_loads_no_numeric_or_cluster_library() -> None:
    # Given the shipped pipeline file, when `lockgate validate` runs in a fresh interpreter,
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lockgate", "validate", "-c", str(ROOT / "pipeline.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    # then it succeeds without importing any heavy library.
    assert done.returncode == 0, f"validate failed: {done.stderr[-2000:]}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    loaded = sorted(name for name in HEAVY if name in imported)
    assert not loaded, f"`lockgate validate` imported {loaded}"
