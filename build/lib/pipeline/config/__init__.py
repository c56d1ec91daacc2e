"""Typed pipeline definition: the validated config *is* the job.

Every model is frozen and forbids unknown keys; defaults live here and nowhere else. This package is a
leaf: it needs pydantic, PyYAML, the shared vocabulary and serving's rollout policy model, nothing that
computes (so ``lockgate validate`` loads no pandas, scipy, Ray or MLflow).
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from contracts.strict import Problems, StrictModel, format_problems
from contracts.vocabulary import DEFAULT_METRIC, TASK_METRICS, Alias, ColumnType, MetricName, Task
from pipeline.config.triggers import TriggersConfig
from serving.spec import RolloutPolicy

LABEL_TYPES: dict[Task, tuple[ColumnType, ...]] = {
    Task.binary: (ColumnType.integer, ColumnType.boolean),
    Task.multiclass: (ColumnType.integer, ColumnType.category),
    Task.regression: (ColumnType.float, ColumnType.integer),
}
"""The label column types each task accepts (the values themselves are checked when the data is read)."""
BUILTIN_MODEL_TASKS: frozenset[Task] = frozenset({Task.binary})
"""The tasks the built-in model (``model:``) trains."""


class ColumnSpec(StrictModel):
    """One declared column: its type, allowed range or categories, and nullability."""

    type: ColumnType
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None
    nullable: bool = False

    @model_validator(mode="after")
    def _check_consistency(self) -> ColumnSpec:
        if self.type == ColumnType.category and not self.categories:
            raise ValueError("a category column needs a non-empty 'categories' list")
        if self.type != ColumnType.category and self.categories is not None:
            raise ValueError(f"'categories' is only allowed on category columns, not {self.type.value}")
        if self.type in (ColumnType.category, ColumnType.boolean) and (
            self.min is not None or self.max is not None
        ):
            raise ValueError(f"'min'/'max' are only allowed on numeric columns, not {self.type.value}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class DataSchema(StrictModel):
    """The declared shape of the data set; the label is one of the columns."""

    label: str
    columns: dict[str, ColumnSpec]

    @model_validator(mode="after")
    def _label_is_declared(self) -> DataSchema:
        if self.label not in self.columns:
            raise ValueError(f"label column '{self.label}' is not among the declared columns")
        return self

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """All declared columns except the label, in declaration order."""
        return tuple(name for name in self.columns if name != self.label)


class DataSource(StrictModel):
    """Where the data set is read from: a path (relative to the pipeline file) or a URI."""

    uri: str
    format: Literal["auto", "csv", "parquet"] = "auto"
    name: str = "training-data"


class SplitConfig(StrictModel):
    """A deterministic train / held-out split."""

    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 42
    stratify: bool = True


class ModelConfig(StrictModel):
    """The classifier: an MLP over standardised numeric and one-hot categorical features."""

    features: tuple[str, ...] | None = None
    hidden_units: tuple[Annotated[int, Field(gt=0, le=4096)], ...] = (64, 32)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class ScalingSpec(StrictModel):
    """Ray Train scaling: how many workers and what each reserves."""

    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)


class TrainingConfig(StrictModel):
    """Which code trains the model, its hyperparameters, scaling and fault tolerance for the Ray Train run.

    ``trainer``: a team's training function as ``package.module:function``, importable from the pipeline
    file's directory (the job's working directory); unset, the built-in model (``model:``) trains with
    ``epochs``, ``batch_size``, ``learning_rate`` and ``weight_decay``. ``params``: the team's own
    hyperparameters, handed to its function and logged to MLflow as ``param.<name>``.
    """

    trainer: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
    )
    params: dict[str, JsonValue] = Field(default_factory=dict)
    epochs: int = Field(default=6, ge=1, le=1000)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    seed: int = 0
    scaling: ScalingSpec = ScalingSpec()
    max_failures: int = Field(default=1, ge=0)
    storage_path: str | None = None
    # Chaos switch for tests and drills: rank 0 raises once, right after checkpointing this epoch.
    inject_failure_at_epoch: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _failure_epoch_in_range(self) -> TrainingConfig:
        if self.inject_failure_at_epoch is not None and self.inject_failure_at_epoch >= self.epochs:
            raise ValueError(
                f"inject_failure_at_epoch ({self.inject_failure_at_epoch}) must be below epochs ({self.epochs})"
            )
        return self


class GateMode(StrEnum):
    """How a gate's decision is applied."""

    enforced = "enforced"
    dry_run = "dry_run"
    disabled = "disabled"


class ThresholdRule(StrictModel):
    """An absolute bound on one metric, overall or on every slice of the named columns."""

    metric: MetricName
    min: float | None = None
    max: float | None = None
    slices: tuple[str, ...] = ()
    min_slice_rows: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _has_bound(self) -> ThresholdRule:
        if self.min is None and self.max is None:
            raise ValueError("a threshold rule needs 'min' or 'max'")
        return self


class ThresholdGateConfig(StrictModel):
    """Absolute thresholds on declared metrics."""

    mode: GateMode = GateMode.enforced
    rules: tuple[ThresholdRule, ...] = ()


class RegressionGateConfig(StrictModel):
    """No regression against the champion, decided on a paired bootstrap confidence interval.

    ``metric``: any metric of the pipeline's task (default: the task's, e.g. AUC for binary). ``slices``:
    columns whose every value with at least ``min_slice_rows`` held-out rows must also pass, each with its
    own interval, so a model that is better overall but worse for one group is caught.
    """

    mode: GateMode = GateMode.enforced
    metric: MetricName | None = None
    slices: tuple[str, ...] = ()
    min_slice_rows: int = Field(default=200, ge=2)
    tolerance: float = Field(default=0.01, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = 0


class GatesConfig(StrictModel):
    """All gates a candidate must pass before it is registered."""

    thresholds: ThresholdGateConfig = ThresholdGateConfig()
    regression: RegressionGateConfig = RegressionGateConfig()


class RegistryConfig(StrictModel):
    """Where the model is registered and how the first version of a name is aliased."""

    model_name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    experiment: str | None = None
    first_model_alias: Literal[Alias.champion, Alias.candidate] = Alias.champion


class WebhookSink(StrictModel):
    """An HTTP endpoint that receives events as JSON; the URL may come from an env var (it is a secret)."""

    url: str | None = None
    url_env: str | None = None
    events: tuple[str, ...] = ("pipeline_failed", "gate_blocked", "rollback")
    timeout_s: float = Field(default=5.0, gt=0.0)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSink:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of 'url' or 'url_env'")
        return self


class EventsConfig(StrictModel):
    """Where pipeline events go: a JSON-lines log file and any webhooks."""

    log_file: str = ".lockgate/events.jsonl"
    webhooks: tuple[WebhookSink, ...] = ()


class CostConfig(StrictModel):
    """Prices for the run's cost estimate: resource-seconds (CPUs held x stage duration) times a price."""

    price_per_cpu_hour: float = Field(default=0.048, ge=0.0)  # an on-demand general-purpose vCPU-hour, USD
    currency: str = "USD"


class PipelineConfig(StrictModel):
    """The whole pipeline definition."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9\-]*$")
    task: Task = Task.binary
    data: DataSource
    data_schema: DataSchema = Field(alias="schema")
    split: SplitConfig = SplitConfig()
    slices: tuple[str, ...] = ()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gates: GatesConfig = GatesConfig()
    registry: RegistryConfig
    rollout: RolloutPolicy = RolloutPolicy()
    events: EventsConfig = EventsConfig()
    cost: CostConfig = CostConfig()
    triggers: TriggersConfig = TriggersConfig()

    model_config = ConfigDict(populate_by_name=True)  # merged with StrictModel's: frozen, extra forbidden

    @model_validator(mode="before")
    @classmethod
    def _degradation_metric_of_task(cls, data: Any) -> Any:
        """An unnamed degradation metric is the task's default (auc, macro_f1, rmse), as for the gates."""
        if not isinstance(data, dict):
            return data
        triggers = data.get("triggers")
        degradation = triggers.get("degradation") if isinstance(triggers, dict) else None
        if triggers is not None and not isinstance(triggers, dict):
            return data  # a typed object or nonsense: the model's own validation speaks
        if isinstance(degradation, dict) and "metric" in degradation:
            return data
        if degradation is not None and not isinstance(degradation, dict):
            return data
        try:
            task = Task(data.get("task", cls.model_fields["task"].default))
        except ValueError:
            return data  # the task field's own error names it
        return {
            **data,
            "triggers": {
                **(triggers or {}),
                "degradation": {**(degradation or {}), "metric": DEFAULT_METRIC[task]},
            },
        }

    @field_validator("slices")
    @classmethod
    def _unique_slices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("slices must not repeat a column")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> PipelineConfig:
        columns = self.data_schema.columns
        problems = self._task_problems()
        for column in self.slices:
            if column not in columns:
                problems.append(f"slices: '{column}' is not a declared column")
            elif columns[column].type != ColumnType.category:
                problems.append(f"slices: '{column}' must be a category column")
        for feature in self.model.features or ():
            if feature not in columns or feature == self.data_schema.label:
                problems.append(f"model.features: '{feature}' is not a declared feature column")
        for index, rule in enumerate(self.gates.thresholds.rules):
            for column in rule.slices:
                if column not in self.slices:
                    problems.append(
                        f"gates.thresholds.rules.{index}.slices: '{column}' is not in the declared slices"
                    )
        for column in self.gates.regression.slices:
            if column not in self.slices:
                problems.append(f"gates.regression.slices: '{column}' is not in the declared slices")
        if problems:
            raise Problems(problems)
        return self

    def _task_problems(self) -> list[str]:
        """What contradicts the declared task: the label column's type, metrics the task has not, the trainer."""
        task, label = self.task, self.data_schema.label
        problems = []
        label_types = LABEL_TYPES[task]
        if label in self.data_schema.columns and self.data_schema.columns[label].type not in label_types:
            allowed = " or ".join(t.value for t in label_types)
            problems.append(
                f"schema.columns.{label}.type: the label of a {task.value} task must be {allowed}, "
                f"not {self.data_schema.columns[label].type.value}"
            )
        metrics = TASK_METRICS[task]
        named = [
            *(
                (f"gates.thresholds.rules.{index}.metric", rule.metric)
                for index, rule in enumerate(self.gates.thresholds.rules)
            ),
            ("gates.regression.metric", self.gates.regression.metric),
        ]
        if self.triggers.degradation.enabled:
            named.append(("triggers.degradation.metric", self.triggers.degradation.metric))
        problems.extend(
            f"{where}: task '{task.value}' has no metric '{metric}'; its metrics are: {', '.join(metrics)}"
            for where, metric in named
            if metric is not None and metric not in metrics
        )
        if self.training.trainer is None and task not in BUILTIN_MODEL_TASKS:
            problems.append(
                f"task: the built-in model (model:, an MLP classifier) trains '{Task.binary.value}' tasks only, "
                f"not '{task.value}': name your own with training.trainer"
            )
        return problems

    @property
    def regression_metric(self) -> str:
        """The metric the no-regression gate compares: the file's, or the task's default."""
        return self.gates.regression.metric or DEFAULT_METRIC[self.task]

    @property
    def features(self) -> tuple[str, ...]:
        """The model's input columns: declared features, or every non-label column."""
        return self.model.features or self.data_schema.feature_columns

    def config_hash(self) -> str:
        """A stable hash of the validated config (defaults included), for lineage."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ConfigError(Exception):
    """A pipeline file that cannot be read or does not validate; lists every problem with its field path."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


def parse_config(raw: Any, source: str = "<config>") -> PipelineConfig:
    """Validate an already-parsed mapping; raise ConfigError with every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"<root>: expected a mapping, got {type(raw).__name__}"])
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(source, format_problems(error)) from None


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read file: {error.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [f"invalid YAML: {error}"]) from None
    return parse_config(raw, str(path))


def json_schema() -> dict[str, Any]:
    """The JSON schema of the pipeline definition."""
    return PipelineConfig.model_json_schema(by_alias=True)
