"""What starts a retraining run: the ``triggers:`` block of the pipeline file (drift, degradation, schedule).

The decision itself (N of M windows, events, cooldown, cap) is :mod:`pipeline.triggers`; this is only the
declared, validated configuration, so loading a pipeline file needs nothing but pydantic.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from contracts.strict import StrictModel
from contracts.vocabulary import LOWER_IS_BETTER, MetricName
from pipeline.config.drift import DriftConfig


class TriggerReason(StrEnum):
    """Why a run starts."""

    drift = "drift"
    degradation = "degradation"
    schedule = "schedule"


class BreachRule(StrictModel):
    """A breach must hold in ``breaches`` of the last ``windows`` windows, the latest included."""

    breaches: int = Field(default=2, ge=1)
    windows: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _breaches_fit(self) -> BreachRule:
        if self.breaches > self.windows:
            raise ValueError(f"breaches ({self.breaches}) cannot exceed windows ({self.windows})")
        return self


class DriftTrigger(StrictModel):
    """Retrain when captured traffic drifts from the serving model's training reference.

    ``window_rows``: captured rows per drift window (the watcher checks each full window once).
    ``check``: thresholds of the drift check itself (:class:`pipeline.drift.DriftConfig`).
    """

    enabled: bool = True
    window_rows: int = Field(default=5_000, ge=1)
    confirm: BreachRule = BreachRule()
    check: DriftConfig = DriftConfig()


class DegradationTrigger(StrictModel):
    """Retrain when the serving model's quality on labelled traffic degrades.

    A window breaches when ``metric`` is worse than the absolute bound (``min_value`` for metrics where
    higher is better, ``max_value`` for log_loss/brier) or has worsened by more than ``max_drop`` against
    the serving model's offline value of the same metric. Windows with fewer than ``min_labelled_rows``
    labels are not judged.
    """

    enabled: bool = False
    metric: MetricName = "auc"
    min_value: float | None = None
    max_value: float | None = None
    max_drop: float | None = Field(default=None, ge=0.0)
    min_labelled_rows: int = Field(default=200, ge=1)
    confirm: BreachRule = BreachRule()

    @model_validator(mode="after")
    def _bounds_match_metric(self) -> DegradationTrigger:
        lower_is_better = self.metric in LOWER_IS_BETTER
        if lower_is_better and self.min_value is not None:
            raise ValueError(f"'{self.metric}' is lower-is-better: bound it with max_value, not min_value")
        if not lower_is_better and self.max_value is not None:
            raise ValueError(f"'{self.metric}' is higher-is-better: bound it with min_value, not max_value")
        if self.enabled and self.min_value is None and self.max_value is None and self.max_drop is None:
            raise ValueError("an enabled degradation trigger needs min_value/max_value or max_drop")
        return self


class ScheduleTrigger(StrictModel):
    """Retrain on a cron schedule (five fields, evaluated in UTC), e.g. ``0 3 * * 1`` for Mondays 03:00."""

    enabled: bool = True
    cron: str

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter  # only when a schedule is declared

        if not croniter.is_valid(value):
            raise ValueError(f"not a valid cron expression: {value!r}")
        return value


class GuardrailsConfig(StrictModel):
    """Limits every trigger obeys: a cooldown after a run starts and a cap on concurrent runs."""

    cooldown_s: float = Field(default=3_600.0, ge=0.0)
    max_concurrent_runs: int = Field(default=1, ge=1)


class TriggersConfig(StrictModel):
    """Everything that starts a retraining run, declared in the pipeline definition (``triggers:``)."""

    drift: DriftTrigger = DriftTrigger()
    degradation: DegradationTrigger = DegradationTrigger()
    schedule: ScheduleTrigger | None = None
    guardrails: GuardrailsConfig = GuardrailsConfig()
