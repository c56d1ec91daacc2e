"""The shipped data set generator: deterministic, with a drift knob and a bad-batch knob."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data import make_loans, write_table
from pipeline.prepare import validate_frame
from tests.conftest import ROOT


def test_generation_is_deterministic_and_valid() -> None:
    first, second = make_loans(2_000, seed=3), make_loans(2_000, seed=3)
    pd.testing.assert_frame_equal(first, second)
    report = validate_frame(first, load_config(ROOT / "pipeline.yaml").data_schema)
    assert report.ok, report.describe()
    assert 0.05 < first["default"].mean() < 0.4, "a realistic default rate"


def test_shift_moves_the_population() -> None:
    base, shifted = make_loans(5_000, seed=1), make_loans(5_000, seed=1, shift=1.0)
    assert shifted["credit_score"].mean() < base["credit_score"].mean() - 20, "credit scores fall under shift"
    assert (shifted["region"] == "south").mean() > (base["region"] == "south").mean() + 0.1


def test_bad_batch_breaks_rows_three_ways() -> None:
    report = validate_frame(
        make_loans(3_000, seed=2, bad_fraction=0.03), load_config(ROOT / "pipeline.yaml").data_schema
    )
    problems = {(p.column, p.problem.split(" ")[0]) for p in report.problems}
    assert ("credit_score", "missing") in problems, problems
    assert ("age", "below") in problems, problems
    assert ("region", "category") in problems, problems


def test_knobs_are_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="shift"):
        make_loans(10, shift=2.0)
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_table(make_loans(10), tmp_path / "x.json")
