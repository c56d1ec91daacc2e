"""Wine cultivar, a three-class problem: LightGBM, a gradient-boosting library, answering class probabilities.

The pipeline calls ``train`` inside a Ray Train worker (``training.scaling``: one worker; LightGBM's own
threads are bounded by ``n_jobs``) and logs what it returns as an MLflow model that the router serves.
"""

from __future__ import annotations

from lightgbm import LGBMClassifier

from pipeline.trainer import TrainerInput


def train(data: TrainerInput) -> LGBMClassifier:
    """Fit on the training rows with the pipeline file's ``training.params``."""
    model = LGBMClassifier(random_state=data.seed, n_jobs=1, verbose=-1, **data.params)
    return model.fit(data.x, data.y)
