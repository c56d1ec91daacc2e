"""How captured traffic is judged for drift: the ``triggers.drift.check`` block of the pipeline file."""

from __future__ import annotations

from pydantic import Field

from contracts.strict import StrictModel


class ProfileConfig(StrictModel):
    """How the reference profile is built at training time."""

    bins: int = Field(default=10, ge=2, le=100)


class FeatureDriftRule(StrictModel):
    """A per-column override of the drift decision."""

    enabled: bool = True
    psi_threshold: float | None = Field(default=None, gt=0.0)


class DriftConfig(StrictModel):
    """How a batch is judged against the reference profile.

    ``psi_threshold``: a column drifts when its PSI reaches this (and its p-value is below ``alpha``).
    ``alpha``: significance the chi-square test must also reach; ``None`` decides on PSI alone.
    ``drift_share``: the batch drifts when at least this share of the checked features drifted...
    ``prediction_decides``: ...or when the prediction drifted (if predictions were given).
    ``min_rows``: below this many rows no column is judged (the report says the batch was too small).
    ``features``: per-column overrides, keyed by column name (``prediction`` for the prediction).
    """

    psi_threshold: float = Field(default=0.2, gt=0.0)
    prediction_psi_threshold: float = Field(default=0.2, gt=0.0)
    alpha: float | None = Field(default=0.05, gt=0.0, lt=1.0)
    drift_share: float = Field(default=0.5, gt=0.0, le=1.0)
    prediction_decides: bool = True
    min_rows: int = Field(default=200, ge=1)
    features: dict[str, FeatureDriftRule] = Field(default_factory=dict)
