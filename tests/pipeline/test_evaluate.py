"""Evaluate stage core: metrics agree with scikit-learn; slices cover every declared value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from pipeline.evaluate import OVERALL, compute_metrics, evaluate_predictions, flatten_metrics


@pytest.fixture()
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(2_000) < 0.3).astype(float)
    p = np.clip(0.3 + 0.35 * (y - 0.3) + rng.normal(0, 0.2, 2_000), 0.001, 0.999)
    return y, p


def test_metrics_match_scikit_learn(scored) -> None:
    y, p = scored
    values = compute_metrics(y, p)
    assert values["auc"] == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)
    assert values["accuracy"] == pytest.approx(sk.accuracy_score(y, p >= 0.5))
    assert values["f1"] == pytest.approx(sk.f1_score(y, p >= 0.5))
    assert values["log_loss"] == pytest.approx(sk.log_loss(y, p), rel=1e-9)
    assert values["brier"] == pytest.approx(sk.brier_score_loss(y, p))


def test_auc_with_ties_and_single_class() -> None:
    y = np.array([0, 1, 0, 1, 1.0])
    p = np.array([0.5, 0.5, 0.2, 0.9, 0.5])
    assert compute_metrics(y, p)["auc"] == pytest.approx(sk.roc_auc_score(y, p))
    assert np.isnan(compute_metrics(np.ones(4), np.full(4, 0.5))["auc"]), "AUC is undefined on one class"


def test_slices_and_flat_names(scored) -> None:
    y, p = scored
    frame = pd.DataFrame({"label": y, "region": np.where(np.arange(len(y)) % 3 == 0, "north", "south")})
    evaluation = evaluate_predictions(frame, "label", p, ("region",))
    assert set(evaluation) == {OVERALL, "region=north", "region=south"}
    assert evaluation["region=north"]["rows"] + evaluation["region=south"]["rows"] == len(y)
    flat = flatten_metrics(evaluation)
    assert "test.auc" in flat and "test.region.north.auc" in flat, sorted(flat)
