"""Drift core: the reference profile, per-feature and prediction drift, input errors, and quality metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataSchema, load_config
from pipeline.config.drift import DriftConfig, FeatureDriftRule
from pipeline.data import make_loans
from pipeline.drift import (
    PREDICTION,
    DriftInputError,
    ReferenceProfile,
    build_profile,
    check_drift,
    describe_report,
    measure_quality,
)
from tests.conftest import ROOT

SHIFTED_FEATURES = {"credit_score", "debt_to_income", "open_accounts", "region", "income"}
UNSHIFTED_FEATURES = {"age", "employment_years", "product"}


def score_loans(frame: pd.DataFrame, risk: float = 0.0) -> np.ndarray:
    """A fixed stand-in for the model: a logistic score of the main risk drivers."""
    logit = (
        -1.6
        - 0.012 * (frame["credit_score"].astype("float64") - 680)
        + 1.8 * frame["debt_to_income"]
        + 0.9 * np.log(frame["loan_amount"] / frame["income"] + 0.05)
        + risk
    )
    return (1 / (1 + np.exp(-logit))).to_numpy(dtype="float64")


@pytest.fixture(scope="module")
def schema() -> DataSchema:
    return load_config(ROOT / "pipeline.yaml").data_schema


@pytest.fixture(scope="module")
def profile(schema: DataSchema) -> ReferenceProfile:
    held_out = make_loans(5_000, seed=1)
    return build_profile(make_loans(20_000, seed=0), schema, predictions=score_loans(held_out))


def test_profile_is_small_serialisable_and_binned(profile: ReferenceProfile) -> None:
    text = profile.to_json()
    assert len(text) < 10_000, f"the profile stays a few kilobytes, got {len(text)} bytes"
    assert ReferenceProfile.from_json(text) == profile, "the JSON round trip is lossless"
    assert set(profile.columns) == SHIFTED_FEATURES | UNSHIFTED_FEATURES | {"loan_amount"}
    income = profile.columns["income"]
    assert income.kind == "numeric" and len(income.counts) == 10, "ten quantile bins by default"
    assert max(income.counts) - min(income.counts) <= 2, "quantile bins hold equal shares of the reference"
    region = profile.columns["region"]
    assert region.kind == "categorical" and region.categories == ("north", "south", "east", "west")
    assert sum(region.counts) == 20_000 and region.unseen == 0 and region.missing == 0
    assert profile.prediction is not None and sum(profile.prediction.counts) == 5_000


def test_same_distribution_batches_do_not_drift(profile: ReferenceProfile) -> None:
    for seed in range(100, 120):
        batch = make_loans(2_000, seed=seed)
        report = check_drift(profile, batch, predictions=score_loans(batch))
        assert not report.drifted, f"seed {seed}: {describe_report(report)}"
        assert report.drifted_features == (), f"seed {seed}: no feature drifts without a shift"
        assert report.prediction is not None and not report.prediction.drifted
        worst = max(f.score for f in report.features.values())
        assert worst < 0.05, f"seed {seed}: PSI stays near zero on the same distribution, got {worst:.3f}"


def test_planted_population_shift_drifts_the_moved_features(profile: ReferenceProfile) -> None:
    batch = make_loans(3_000, seed=7, shift=1.0)
    report = check_drift(profile, batch, predictions=score_loans(batch))
    assert report.drifted, describe_report(report)
    drifted = set(report.drifted_features)
    assert drifted >= {"credit_score", "debt_to_income", "open_accounts", "region"}, drifted
    assert not drifted & UNSHIFTED_FEATURES, f"features the shift does not move stay stable: {drifted}"
    credit = report.features["credit_score"]
    assert credit.p_value < 1e-6 and credit.statistic > 0, "a large shift is also significant"
    assert credit.current_mean is not None and credit.reference_mean is not None
    assert credit.current_mean < credit.reference_mean - 20, "the report shows the direction of the shift"
    assert report.prediction is not None and report.prediction.drifted, "scores move with the population"


def test_categorical_drift_and_unseen_categories(profile: ReferenceProfile) -> None:
    batch = make_loans(3_000, seed=8)
    only_south = batch.assign(region="south")
    report = check_drift(profile, only_south)
    assert report.drifted_features == ("region",), describe_report(report)
    assert report.features["region"].kind == "categorical"
    assert report.prediction is None, "no predictions given, no prediction drift"

    unseen = batch.assign(product=np.where(np.arange(len(batch)) % 3 == 0, "crypto", batch["product"]))
    product = check_drift(profile, unseen).features["product"]
    assert product.drifted, "a third of rows in an unknown category is drift"
    assert product.unseen_share == pytest.approx(1 / 3, abs=0.01)


def test_prediction_drift_alone_decides_by_default(profile: ReferenceProfile) -> None:
    batch = make_loans(3_000, seed=9)
    riskier = score_loans(batch, risk=1.5)
    report = check_drift(profile, batch, predictions=riskier)
    assert report.drifted_features == (), "the features did not move"
    assert report.prediction is not None and report.prediction.drifted
    assert report.drifted, "prediction drift makes the batch drift by default"
    relaxed = check_drift(profile, batch, predictions=riskier, config=DriftConfig(prediction_decides=False))
    assert relaxed.prediction is not None and relaxed.prediction.drifted and not relaxed.drifted


def test_missing_values_are_counted_not_fatal(profile: ReferenceProfile) -> None:
    batch = make_loans(3_000, seed=10)
    batch["credit_score"] = batch["credit_score"].astype("Int64")
    batch.loc[batch.index[:900], "credit_score"] = pd.NA
    result = check_drift(profile, batch).features["credit_score"]
    assert result.missing_share == pytest.approx(0.3)
    assert result.drifted, "a feed that suddenly sends 30% nulls has drifted"


def test_thresholds_are_configurable_per_feature(profile: ReferenceProfile) -> None:
    batch = make_loans(3_000, seed=11, shift=1.0)
    config = DriftConfig(
        features={
            "debt_to_income": FeatureDriftRule(psi_threshold=50.0),
            "open_accounts": FeatureDriftRule(enabled=False),
        }
    )
    report = check_drift(profile, batch, config=config)
    relaxed = report.features["debt_to_income"]
    assert not relaxed.drifted and relaxed.threshold == 50.0, "a per-feature threshold overrides the default"
    skipped = report.features["open_accounts"]
    assert not skipped.checked and not skipped.drifted and skipped.score > 0.2, "scored, not judged"
    assert len(report.drifted_features) / 8 == pytest.approx(report.drift_share), "share over judged columns"


def test_small_batches_are_not_judged(profile: ReferenceProfile) -> None:
    batch = make_loans(50, seed=12, shift=1.0)
    report = check_drift(profile, batch, predictions=score_loans(batch))
    assert not report.sufficient and not report.drifted
    assert not any(f.checked for f in report.features.values())
    assert "min_rows" in report.explanation


def test_metrics_are_flat_and_named_by_column(profile: ReferenceProfile) -> None:
    batch = make_loans(1_000, seed=13)
    metrics = check_drift(profile, batch, predictions=score_loans(batch)).to_metrics()
    expected = {"drift.psi.income", "drift.p_value.region", "drift.drifted.age", "drift.psi.prediction"}
    assert expected <= set(metrics), sorted(metrics)
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: f.drop(columns=["income"]), "income"),
        (lambda f: f.assign(age=f["age"].astype(object).where(f.index % 7 != 0, "unknown")), "age"),
        (lambda f: f.iloc[:0], "no rows"),
    ],
    ids=["missing-column", "text-in-numeric-column", "empty-batch"],
)
def test_bad_batches_raise_naming_the_column(profile: ReferenceProfile, change, named: str) -> None:
    with pytest.raises(DriftInputError, match=f"'?{named}'?"):
        check_drift(profile, change(make_loans(500, seed=14)))


def test_numbers_with_a_generic_dtype_are_accepted(profile: ReferenceProfile) -> None:
    batch = make_loans(1_000, seed=16)
    as_objects = batch.assign(age=batch["age"].astype(object), income=batch["income"].astype(str))
    expected = check_drift(profile, batch)
    assert check_drift(profile, as_objects).features == expected.features, "same verdict, whatever the dtype"


def test_bad_predictions_and_rules_raise_clearly(profile: ReferenceProfile, schema: DataSchema) -> None:
    batch = make_loans(500, seed=15)
    with pytest.raises(DriftInputError, match=f"'{PREDICTION}': 499 predictions for a batch of 500 rows"):
        check_drift(profile, batch, predictions=np.full(499, 0.5))
    with pytest.raises(DriftInputError, match=r"must lie in \[0, 1\]"):
        check_drift(profile, batch, predictions=np.full(500, 1.5))
    with pytest.raises(DriftInputError, match="unknown column.*incom"):
        check_drift(profile, batch, config=DriftConfig(features={"incom": FeatureDriftRule()}))
    without_predictions = build_profile(make_loans(1_000, seed=0), schema)
    with pytest.raises(DriftInputError, match="no prediction distribution"):
        check_drift(without_predictions, batch, predictions=np.full(500, 0.5))
    with pytest.raises(DriftInputError, match="reference is missing column.*region"):
        build_profile(make_loans(100, seed=0).drop(columns=["region"]), schema)


def test_config_models_are_strict() -> None:
    with pytest.raises(ValueError, match="psi_treshold"):
        DriftConfig.model_validate({"psi_treshold": 0.1})
    with pytest.raises(ValueError):
        DriftConfig(drift_share=0.0)


def test_quality_uses_the_gate_metrics_and_skips_unlabelled_rows() -> None:
    labels = np.array([0, 1, 0, 1, np.nan, np.nan])
    predictions = np.array([0.1, 0.9, 0.2, 0.8, 0.5, 0.5])
    quality = measure_quality(labels, predictions)
    assert quality["rows"] == 4.0, "unlabelled rows are skipped"
    assert quality["auc"] == 1.0 and quality["accuracy"] == 1.0
    assert {"auc", "accuracy", "f1", "log_loss", "brier", "positive_rate"} <= set(quality)
    with pytest.raises(DriftInputError, match="labels must be 0 or 1"):
        measure_quality([0, 2], [0.1, 0.2])
    with pytest.raises(DriftInputError, match="3 labels for 2 predictions"):
        measure_quality([0, 1, 1], [0.1, 0.2])
