"""Train stage: a Ray Train TorchTrainer over the encoded table, checkpointed and fault tolerant."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ColumnType, PipelineConfig
from pipeline.model import WEIGHTS_FILE, FeatureEncoder, build_mlp, predict_proba
from pipeline.trainer import ray_train_configs

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class TrainingData:
    """Encoded arrays for training and per-epoch validation, with the encoder that produced them."""

    encoder: FeatureEncoder
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class TrainingResult:
    """What the train stage hands on: the trained weights, the last epoch's metrics, and whether it resumed."""

    state_dict: dict[str, Any]
    final_metrics: dict[str, Any]
    resumed_from_epoch: int
    checkpoint_path: str


def encode_training_data(train: pd.DataFrame, config: PipelineConfig) -> TrainingData:
    """Fit the encoder on training rows and hold out a seeded validation share for per-epoch metrics."""
    columns = config.data_schema.columns
    features = config.features
    numeric = tuple(
        f for f in features if columns[f].type in (ColumnType.integer, ColumnType.float, ColumnType.boolean)
    )
    categorical = {
        f: tuple(columns[f].categories or ()) for f in features if columns[f].type == ColumnType.category
    }
    rng = np.random.default_rng(config.training.seed)
    order = rng.permutation(len(train))
    cut = max(1, int(len(train) * VALIDATION_FRACTION))
    val_rows, fit_rows = train.iloc[order[:cut]], train.iloc[order[cut:]]
    encoder = FeatureEncoder.fit(
        fit_rows, numeric, categorical, config.model.hidden_units, config.model.dropout
    )
    label = config.data_schema.label
    return TrainingData(
        encoder=encoder,
        x_train=encoder.transform(fit_rows),
        y_train=fit_rows[label].to_numpy(dtype="float32"),
        x_val=encoder.transform(val_rows),
        y_val=val_rows[label].to_numpy(dtype="float32"),
    )


def _binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: resume from the last checkpoint, train, report each epoch."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from sklearn.metrics import roc_auc_score

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(loop_config["seed"])
    network = build_mlp(loop_config["input_dim"], tuple(loop_config["hidden_units"]), loop_config["dropout"])
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=loop_config["learning_rate"], weight_decay=loop_config["weight_decay"]
    )
    start_epoch, resumed_from = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=True)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = resumed_from = int(state["epoch"])
    network = ray.train.torch.prepare_model(network)
    base = getattr(network, "module", network)

    x_all, y_all = loop_config["x_train"], loop_config["y_train"]
    x_shard = torch.from_numpy(np.ascontiguousarray(x_all[rank::world]))
    y_shard = torch.from_numpy(np.ascontiguousarray(y_all[rank::world]))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch_size = loop_config["batch_size"]
    # Every worker takes the same number of steps so DDP's collective calls stay in lockstep.
    steps = max(1, len(y_all) // world // batch_size)
    mlflow_client = _mlflow_client(loop_config.get("mlflow_run_id")) if rank == 0 else None

    for epoch in range(start_epoch, loop_config["epochs"]):
        network.train()
        generator = torch.Generator().manual_seed(loop_config["seed"] * 1000 + epoch * 10 + rank)
        order = torch.randperm(len(y_shard), generator=generator)
        total = torch.zeros(2)
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            optimizer.zero_grad()
            loss = loss_fn(network(x_shard[index]).squeeze(-1), y_shard[index])
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(index), len(index)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        probability = predict_proba(base, loop_config["x_val"])
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(total[0] / total[1]),
            "val_loss": _binary_log_loss(loop_config["y_val"], probability),
            "val_auc": float(roc_auc_score(loop_config["y_val"], probability)),
            "resumed_from_epoch": resumed_from,
        }
        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                torch.save(
                    {"model": base.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                    Path(directory) / "state.pt",
                )
                torch.save(base.state_dict(), Path(directory) / WEIGHTS_FILE)
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=report_checkpoint)
        if mlflow_client is not None:
            _log_epoch(mlflow_client, loop_config["mlflow_run_id"], metrics)
        failure_epoch = loop_config.get("inject_failure_at_epoch")
        if rank == 0 and failure_epoch == epoch + 1 and resumed_from < failure_epoch:
            raise RuntimeError(
                f"injected training failure after epoch {failure_epoch} (training.inject_failure_at_epoch)"
            )


def _mlflow_client(run_id: str | None) -> Any:
    if not run_id:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _log_epoch(client: Any, run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    step = int(metrics["epoch"])
    stamp = int(pd.Timestamp.now().timestamp() * 1000)
    entries = [Metric(f"train.{k}", float(v), stamp, step) for k, v in metrics.items() if k != "epoch"]
    try:
        client.log_batch(run_id, metrics=entries)
    except Exception as error:  # metrics are telemetry: a tracking hiccup must not kill the training run
        logger.warning("could not log epoch %s metrics to MLflow: %s", step, error)


def run_training(
    data: TrainingData,
    config: PipelineConfig,
    run_name: str,
    mlflow_run_id: str | None,
    storage: str | None = None,
) -> TrainingResult:
    """The edge: fit a TorchTrainer on the running Ray cluster and return the final weights.

    Checkpoints go to ``training.storage_path``, else ``storage`` (the environment's, ``Settings.train_storage``),
    else ``~/ray_results``.
    """
    import torch
    from ray.train.torch import TorchTrainer

    training = config.training
    loop_config = {
        "x_train": data.x_train,
        "y_train": data.y_train,
        "x_val": data.x_val,
        "y_val": data.y_val,
        "input_dim": data.encoder.width,
        "hidden_units": list(config.model.hidden_units),
        "dropout": config.model.dropout,
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "learning_rate": training.learning_rate,
        "weight_decay": training.weight_decay,
        "seed": training.seed,
        "mlflow_run_id": mlflow_run_id,
        "inject_failure_at_epoch": training.inject_failure_at_epoch,
    }
    scaling, run = ray_train_configs(training, run_name, storage, checkpoints_kept=2)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling, run_config=run
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    final = dict(result.metrics or {})
    return TrainingResult(
        state_dict=state,
        final_metrics=final,
        resumed_from_epoch=int(final.get("resumed_from_epoch", 0)),
        checkpoint_path=result.checkpoint.path,
    )
