"""The one place a pipeline run talks to MLflow: its run, tags, params, metrics, artefacts, models, registry.

Stages receive a :class:`Tracker` and never call ``mlflow`` themselves, so the run's orchestration can be
tested with a recording fake. :class:`MlflowTracker` is the real one; :class:`StageTimer` times stages
through whichever tracker it is given.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the model and registry modules import MLflow: only the real tracker needs them, lazily
    import pandas as pd

    from pipeline.config import PipelineConfig
    from pipeline.model import FeatureEncoder
    from pipeline.register import Registration

logger = logging.getLogger("lockgate.pipeline")

SETUP_STAGE = "setup"
"""The stage a run is in before its first stage starts."""


class Tracker(Protocol):
    """Everything a pipeline run records, and the registry reads and writes it makes."""

    def start_run(self, experiment: str, run_name: str) -> str:
        """Start the run in ``experiment``; returns its id."""
        ...

    def end_run(self, status: str) -> None:
        """End the run (FINISHED or FAILED), if one is active."""
        ...

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run (values are stringified)."""
        ...

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters on the run."""
        ...

    def log_metric(self, key: str, value: float) -> None:
        """Log one metric on the run."""
        ...

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log several metrics on the run."""
        ...

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Log JSON-ready data as an artefact of the run."""
        ...

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log text as an artefact of the run."""
        ...

    def log_figure(self, png: bytes, artifact_file: str) -> None:
        """Log a picture (PNG bytes, see ``pipeline.figures.png``) as an artefact of the run."""
        ...

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Log a table (column name → values) as an MLflow table artefact of the run."""
        ...

    def log_dataset(self, frame: pd.DataFrame, source: str, name: str, target: str, digest: str) -> None:
        """Log the data set the run trained on as its input."""
        ...

    def log_model(
        self, encoder: FeatureEncoder, state_dict: dict[str, Any], input_example: pd.DataFrame
    ) -> str:
        """Log the packaged model under the run; returns its model URI."""
        ...

    def log_trained_model(
        self, model: Any, flavour: str, input_example: pd.DataFrame, config: PipelineConfig
    ) -> str:
        """Log a team trainer's model as its own flavour; returns its model URI."""
        ...

    def load_model(self, model_uri: str) -> Any:
        """Load a pyfunc model (logged or registered)."""
        ...

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias of a registered model points at, or None."""
        ...

    def register(
        self, model_name: str, model_uri: str, tags: dict[str, str], first_model_alias: str
    ) -> Registration:
        """Register a version with tags and set its alias, all or nothing."""
        ...


class MlflowTracker:
    """The tracker of a real run: MLflow's fluent API for the run, one client for the registry."""

    def __init__(self) -> None:
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The registry client (created on first use, so building a tracker opens no connection)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient()
        return self._client

    def start_run(self, experiment: str, run_name: str) -> str:
        """Start the run in ``experiment``; returns its id."""
        import mlflow

        # Our integer columns are declared non-nullable, so MLflow's integer-with-missing-values hint does not apply.
        warnings.filterwarnings(
            "ignore", message="Hint: Inferred schema contains integer column", category=UserWarning
        )
        from mlflow.exceptions import MlflowException

        from contracts.settings import Settings

        experiment_id = None
        try:
            experiment_id = mlflow.set_experiment(experiment).experiment_id
            return str(mlflow.start_run(run_name=run_name).info.run_id)
        except MlflowException as error:
            if error.error_code != "PERMISSION_DENIED":
                raise
            # A workload's MLflow user is no admin: it writes to the experiments it created (MLflow makes their
            # creator MANAGE) and reads the others. Name the grant that lets this run start.
            user = Settings.from_environ().mlflow_username or "(MLFLOW_TRACKING_USERNAME is not set)"
            where = f"experiment {experiment!r}" + (f" (id {experiment_id})" if experiment_id else "")
            # Under default_permission NO_PERMISSIONS the user cannot even read the experiment's id.
            the_id = (
                repr(experiment_id)
                if experiment_id
                else f"mlflow.get_experiment_by_name({experiment!r}).experiment_id"
            )
            raise PermissionError(
                f"MLflow user {user!r} may not start a run in {where}: another user created it. An MLflow "
                "admin grants it EDIT: mlflow.server.get_app_client('basic-auth', tracking_uri=…)"
                f".grant_user_permission({user!r}, 'experiment', {the_id}, 'EDIT') (REST: "
                "POST /api/3.0/mlflow/users/permissions/grant); or registry.experiment in the pipeline file "
                "names an experiment of its own"
            ) from None

    def end_run(self, status: str) -> None:
        """End the run (FINISHED or FAILED), if one is active."""
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags on the run (values are stringified)."""
        import mlflow

        mlflow.set_tags({str(key): str(value) for key, value in tags.items()})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters on the run."""
        import mlflow

        mlflow.log_params(dict(params))

    def log_metric(self, key: str, value: float) -> None:
        """Log one metric on the run."""
        import mlflow

        mlflow.log_metric(key, value)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log several metrics on the run."""
        import mlflow

        mlflow.log_metrics(dict(metrics))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Log JSON-ready data as an artefact of the run."""
        import mlflow

        mlflow.log_dict(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log text as an artefact of the run."""
        import mlflow

        mlflow.log_text(text, artifact_file)

    def log_figure(self, png: bytes, artifact_file: str) -> None:
        """Log a picture (PNG bytes) as an artefact of the run, under ``artifact_file``'s directory."""
        import tempfile
        from pathlib import Path

        import mlflow

        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            path.write_bytes(png)
            mlflow.log_artifact(str(path), artifact_path=folder or None)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Log a table (column name → values) with ``mlflow.log_table``: the UI shows and compares it."""
        import mlflow

        mlflow.log_table(
            data={name: list(values) for name, values in columns.items()}, artifact_file=artifact_file
        )

    def log_dataset(self, frame: pd.DataFrame, source: str, name: str, target: str, digest: str) -> None:
        """Log the data set the run trained on as its input (context ``training``)."""
        import mlflow
        import mlflow.data.pandas_dataset

        dataset = mlflow.data.pandas_dataset.from_pandas(
            frame, source=source, name=name, targets=target, digest=digest
        )
        mlflow.log_input(dataset, context="training")

    def log_model(
        self, encoder: FeatureEncoder, state_dict: dict[str, Any], input_example: pd.DataFrame
    ) -> str:
        """Log the packaged model under the run; returns its model URI."""
        from pipeline.register import log_model

        return str(log_model(encoder, state_dict, input_example).model_uri)

    def log_trained_model(
        self, model: Any, flavour: str, input_example: pd.DataFrame, config: PipelineConfig
    ) -> str:
        """Log a team trainer's model as its own flavour; returns its model URI."""
        from pipeline.register import log_trained_model

        return str(log_trained_model(model, flavour, input_example, config).model_uri)

    def load_model(self, model_uri: str) -> Any:
        """Load a pyfunc model (logged or registered)."""
        import mlflow

        return mlflow.pyfunc.load_model(model_uri)

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias of a registered model points at, or None."""
        from serving.scoring import alias_version

        return alias_version(self.client, model_name, alias)

    def register(
        self, model_name: str, model_uri: str, tags: dict[str, str], first_model_alias: str
    ) -> Registration:
        """Register a version with tags and set its alias, all or nothing."""
        from pipeline.register import register_version

        return register_version(self.client, model_name, model_uri, tags, first_model_alias)


class StageTimer:
    """Times each stage, logs its duration (``duration_s.<stage>``) through the tracker, names the current one."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.current = SETUP_STAGE
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage; record its duration even when it fails."""
        self.current = name
        logger.info("stage %s: started", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = time.perf_counter() - start
            self.tracker.log_metric(f"duration_s.{name}", self.durations[name])
            logger.info("stage %s: %.2fs", name, self.durations[name])
