"""Disease progression, a regression: scikit-learn's histogram gradient boosting on the declared features."""

from __future__ import annotations

from sklearn.ensemble import HistGradientBoostingRegressor

from pipeline.trainer import TrainerInput


def train(data: TrainerInput) -> HistGradientBoostingRegressor:
    """Fit on the training rows with the pipeline file's ``training.params``; Lockgate logs, gates, registers."""
    model = HistGradientBoostingRegressor(random_state=data.seed, **data.params)
    return model.fit(data.x, data.y)
