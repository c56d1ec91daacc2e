"""Wine cultivar, a three-class problem: gradient boosting that answers class probabilities."""

from __future__ import annotations

from sklearn.ensemble import HistGradientBoostingClassifier

from pipeline.trainer import TrainerInput


def train(data: TrainerInput) -> HistGradientBoostingClassifier:
    """Fit on the training rows with the pipeline file's ``training.params``."""
    model = HistGradientBoostingClassifier(random_state=data.seed, **data.params)
    return model.fit(data.x, data.y)
