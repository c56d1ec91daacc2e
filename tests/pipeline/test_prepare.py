"""Prepare stage core: validation report, deterministic split, fingerprint, loading errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import DataSource, SplitConfig, load_config
from pipeline.data import make_loans, write_table
from pipeline.prepare import (
    DataError,
    fingerprint_frame,
    load_table,
    prepare_frame,
    split_frame,
    validate_frame,
)
from tests.conftest import ROOT

SCHEMA = load_config(ROOT / "pipeline.yaml").data_schema


def test_report_names_columns_and_counts() -> None:
    frame = make_loans(500, seed=0)
    frame.loc[:9, "credit_score"] = 1000
    frame.loc[:4, "region"] = "mars"
    frame = frame.drop(columns=["open_accounts"]).assign(surprise=1)
    report = validate_frame(frame, SCHEMA)
    found = {(p.column, p.problem): p.rows for p in report.problems}
    assert found[("credit_score", "above maximum 850")] == 10, found
    assert found[("region", "category not in ['east', 'north', 'south', 'west']")] == 5, found
    assert ("open_accounts", "declared column is missing") in found, found
    assert ("surprise", "column is not declared in the schema") in found, found
    assert "'mars'" in report.describe(), "examples of bad values are shown"


def test_type_and_null_violations() -> None:
    frame = make_loans(200, seed=0).astype({"age": "object", "open_accounts": "float64"})
    frame.loc[0, "age"] = "forty"
    frame.loc[1, "income"] = np.nan
    frame.loc[2, "open_accounts"] = 2.5
    found = {(p.column, p.problem) for p in validate_frame(frame, SCHEMA).problems}
    assert ("age", "not a integer") in found, found
    assert ("income", "missing value (column is not nullable)") in found, found
    assert ("open_accounts", "not an integer") in found, found


def test_bad_data_raises_with_the_report() -> None:
    with pytest.raises(DataError) as caught:
        prepare_frame(make_loans(1_000, seed=0, bad_fraction=0.05), SCHEMA, SplitConfig())
    assert caught.value.report is not None and not caught.value.report.ok
    assert "credit_score" in str(caught.value)


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    frame = make_loans(2_000, seed=0)
    train_a, test_a = split_frame(frame, "default", SplitConfig(test_fraction=0.25, seed=7))
    train_b, test_b = split_frame(frame, "default", SplitConfig(test_fraction=0.25, seed=7))
    assert test_a.equals(test_b) and train_a.equals(train_b), "same seed, same split"
    assert len(test_a) + len(train_a) == len(frame)
    assert abs(len(test_a) / len(frame) - 0.25) < 0.01
    assert abs(test_a["default"].mean() - frame["default"].mean()) < 0.01, "stratified on the label"
    _, other = split_frame(frame, "default", SplitConfig(test_fraction=0.25, seed=8))
    assert not other.equals(test_a), "a different seed gives a different split"


def test_fingerprint_tracks_content() -> None:
    frame = make_loans(300, seed=0)
    assert fingerprint_frame(frame) == fingerprint_frame(frame.copy())
    changed = frame.copy()
    changed.loc[5, "income"] += 1
    assert fingerprint_frame(changed) != fingerprint_frame(frame), "one changed value changes the fingerprint"


def test_loading_csv_parquet_and_errors(tmp_path) -> None:
    frame = make_loans(50, seed=0)
    write_table(frame, tmp_path / "a.csv")
    write_table(frame, tmp_path / "a.parquet")
    for name in ("a.csv", "a.parquet", f"file://{tmp_path}/a.parquet"):
        loaded, _ = load_table(DataSource(uri=name), tmp_path)
        assert len(loaded) == 50, name
    with pytest.raises(DataError, match="no such file"):
        load_table(DataSource(uri="missing.parquet"), tmp_path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read"):
        load_table(DataSource(uri="junk.parquet"), tmp_path)
    with pytest.raises(DataError, match="cannot tell the format"):
        load_table(DataSource(uri="data.bin"), tmp_path)


def test_labels_that_contradict_the_task_are_reported_before_training() -> None:
    # Given a batch whose label holds a value that is not 0/1, and one with a single class,
    two_valued = make_loans(300, seed=3)
    two_valued.loc[:4, "default"] = 2
    one_class = make_loans(300, seed=3).assign(default=0)
    # when each is validated for the binary task,
    problems = [p.problem for p in validate_frame(two_valued, SCHEMA).problems if p.column == "default"]
    single = [p.problem for p in validate_frame(one_class, SCHEMA).problems if p.column == "default"]
    # then each problem names the task and the label column.
    assert any("task 'binary', label column 'default'" in p and "2" in p for p in problems), problems
    assert any("task 'binary', label column 'default'" in p for p in single), single
    with pytest.raises(DataError):
        prepare_frame(two_valued, SCHEMA, SplitConfig())


def test_a_regression_split_is_not_stratified_on_the_target() -> None:
    from contracts.vocabulary import Task

    frame = make_loans(1_000, seed=5).assign(default=np.random.default_rng(0).normal(size=1_000))
    train, test = split_frame(frame, "default", SplitConfig(test_fraction=0.2), Task.regression)
    assert len(test) == 200 and len(train) == 800, (
        f"an unstratified 80/20 split, got {len(train)}/{len(test)}"
    )
