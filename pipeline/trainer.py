"""A team's own training code: the trainer contract, loading it by import path, and running it under Ray Train.

The contract (``training.trainer: "trainers.churn:train"`` in the pipeline file)::

    def train(data: TrainerInput) -> model

``data`` carries the prepared training rows (features and label), the feature and label names, the task,
the declared schema, the free-form ``training.params``, a seed, and the worker's rank and world size. The
function returns a fitted model: a scikit-learn estimator (or any object with scikit-learn's ``fit`` /
``predict`` API, e.g. LightGBM's or XGBoost's scikit-learn classes), or an ``mlflow.pyfunc.PythonModel``.
Lockgate logs it as an MLflow model of its flavour, evaluates it on the held-out rows through that logged
model, gates and registers it.

It runs as a Ray Train ``DataParallelTrainer`` with ``training.scaling.num_workers`` workers (one for a
scikit-learn model: such a fit does not shard; a framework that does, say XGBoost's collective training,
reads ``world_rank``/``world_size``) and ``FailureConfig(max_failures=training.max_failures)``, so a worker
that dies is restarted. Rank 0's model is the result.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from contracts.vocabulary import Task
from pipeline.config import DataSchema, PipelineConfig, TrainingConfig

MODEL_FILE = "model.pkl"
IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def ray_train_configs(
    training: TrainingConfig, run_name: str, storage: str | None, checkpoints_kept: int | None = None
) -> tuple[Any, Any]:
    """Ray Train's ``ScalingConfig`` and ``RunConfig`` for a run, the built-in model's and a team's alike.

    Workers and their CPUs from ``training.scaling``, restarts from ``training.max_failures``; checkpoints
    go to ``training.storage_path``, else ``storage`` (the environment's), else ``~/ray_results``.
    """
    import ray.train

    scaling = ray.train.ScalingConfig(
        num_workers=training.scaling.num_workers,
        use_gpu=False,
        resources_per_worker={"CPU": training.scaling.cpus_per_worker},
    )
    run = ray.train.RunConfig(
        name=run_name,
        storage_path=training.storage_path or storage or str(Path.home() / "ray_results"),
        failure_config=ray.train.FailureConfig(max_failures=training.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoints_kept),
    )
    return scaling, run


class TrainerError(ValueError):
    """The trainer named in the pipeline file cannot be used; the message names the field and the cause."""


@dataclass(frozen=True)
class TrainerInput:
    """What a trainer receives: the training rows and everything declared about them."""

    train: pd.DataFrame
    features: tuple[str, ...]
    label: str
    task: Task
    schema: DataSchema
    params: Mapping[str, Any]
    seed: int
    world_rank: int = 0
    world_size: int = 1

    @property
    def x(self) -> pd.DataFrame:
        """The feature columns, in declared order."""
        return self.train[list(self.features)]

    @property
    def y(self) -> pd.Series:
        """The label column."""
        return self.train[self.label]


TrainerFunction = Callable[[TrainerInput], Any]


def load_trainer(path: str, field: str = "training.trainer") -> TrainerFunction:
    """Import ``module:function`` and check it takes one argument; a ``TrainerError`` naming the cause."""
    if not IMPORT_PATH.match(path):
        raise TrainerError(f"{field}: '{path}' is not an import path of the form 'package.module:function'")
    module_name, function_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import-time failure of the team's module is a problem with this field
        raise TrainerError(
            f"{field}: cannot import '{module_name}': {type(error).__name__}: {error}"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise TrainerError(f"{field}: module '{module_name}' has no '{function_name}'")
    if not callable(function):
        raise TrainerError(f"{field}: '{path}' is a {type(function).__name__}, not a function")
    try:
        signature = inspect.signature(function)
        signature.bind(None)
    except (TypeError, ValueError):
        raise TrainerError(
            f"{field}: '{path}' must take exactly one argument (the TrainerInput), its signature is "
            f"{function_name}{_signature_text(function)}"
        ) from None
    return function  # type: ignore[no-any-return]


def _signature_text(function: Any) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(?)"


def check_model(model: Any, path: str) -> str:
    """The MLflow flavour a returned model is logged with; a ``TrainerError`` when it cannot be logged.

    It runs in the Train worker, where importing MLflow would cost 1 to 2 s of every run: a model can only be
    a ``PythonModel`` if something in the worker (the team's module) has imported ``mlflow.pyfunc`` already.
    """
    if model is None:
        raise TrainerError(f"training.trainer: '{path}' returned nothing; it must return the fitted model")
    pyfunc = sys.modules.get("mlflow.pyfunc")
    if pyfunc is not None and isinstance(model, pyfunc.PythonModel):
        return "pyfunc"
    if callable(getattr(model, "fit", None)) and callable(getattr(model, "predict", None)):
        return "sklearn"
    raise TrainerError(
        f"training.trainer: '{path}' returned a {type(model).__module__}.{type(model).__name__}; return a "
        "fitted scikit-learn-style estimator (fit/predict) or an mlflow.pyfunc.PythonModel"
    )


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: call the team's function, report rank 0's model as the checkpoint."""
    import cloudpickle
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    function = load_trainer(loop_config["trainer"])
    data = TrainerInput(
        train=loop_config["train"],
        features=tuple(loop_config["features"]),
        label=loop_config["label"],
        task=Task(loop_config["task"]),
        schema=loop_config["schema"],
        params=dict(loop_config["params"]),
        seed=loop_config["seed"],
        world_rank=rank,
        world_size=world,
    )
    model = function(data)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            flavour = check_model(model, loop_config["trainer"])
            (Path(directory) / MODEL_FILE).write_bytes(cloudpickle.dumps(model))
            (Path(directory) / "flavour").write_text(flavour)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({"rank": rank}, checkpoint=checkpoint)


@dataclass(frozen=True)
class CustomTrained:
    """A team trainer's result: the fitted model, the flavour it is logged with, and its checkpoint."""

    model: Any
    flavour: str
    checkpoint_path: str


def run_custom_training(
    config: PipelineConfig, train: pd.DataFrame, run_name: str, storage: str | None = None
) -> CustomTrained:
    """The edge: run the team's trainer under Ray Train on the running cluster and return rank 0's model."""
    import cloudpickle
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer  # Train V2, as ray.train.RunConfig

    training = config.training
    if training.trainer is None:
        raise TrainerError("training.trainer: not set (the built-in model trains through pipeline.train)")
    scaling, run = ray_train_configs(training, run_name, storage)
    trainer = DataParallelTrainer(
        _train_loop,
        train_loop_config={
            "trainer": training.trainer,
            "train": train,
            "features": list(config.features),
            "label": config.data_schema.label,
            "task": config.task.value,
            "schema": config.data_schema,
            "params": dict(training.params),
            "seed": training.seed,
        },
        scaling_config=scaling,
        run_config=run,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise TrainerError(f"training.trainer: '{training.trainer}' finished without a model")
    with result.checkpoint.as_directory() as directory:
        model = cloudpickle.loads((Path(directory) / MODEL_FILE).read_bytes())
        flavour = (Path(directory) / "flavour").read_text()
    return CustomTrained(model, flavour, result.checkpoint.path)
