"""Any model behind the router: a scikit-learn gradient-boosting classifier, registered the team-trainer way.

Two versions (champion and candidate) of one registered model are fitted on the loan data and logged with
``pipeline.register.log_trained_model``, the function a pipeline run uses for a team trainer's model (an
``mlflow.sklearn`` model answering ``predict_proba``, with signature, input example and class labels).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from .settings import REGISTERED_PREFIX, REPO

MODELS = ("sklearn-gbm", "sklearn-hgb")
TRAIN_ROWS = 5_000
BATCH_ROWS = 32  # as many rows as wrk has requests in flight


def build_estimator(kind: str, seed: int, categorical: list[str]) -> Any:
    """A scikit-learn pipeline: categories ordinal-encoded, then gradient boosting (``kind`` picks which)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    encode = ColumnTransformer(
        [("categories", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), categorical)],
        remainder="passthrough",
    )
    if kind == "sklearn-gbm":
        booster: Any = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    elif kind == "sklearn-hgb":
        # The encoded categories come first out of the ColumnTransformer.
        booster = HistGradientBoostingClassifier(
            max_iter=100, categorical_features=list(range(len(categorical))), random_state=seed
        )
    else:
        raise ValueError(f"model: {kind!r} is not one of {MODELS}")
    return Pipeline([("encode", encode), ("boost", booster)])


def register_sklearn_versions(name: str, kind: str) -> None:
    """Fit, log (``log_trained_model``) and register two versions; alias them; print what was registered."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from contracts.vocabulary import Alias
    from pipeline.config import load_config
    from pipeline.data import make_loans
    from pipeline.register import log_trained_model

    config = load_config(REPO / "pipeline.yaml")  # the loan pipeline: task binary, its features and label
    features, label = list(config.features), config.data_schema.label
    mlflow.set_experiment("bench-any-model")
    versions, fit_s = [], []
    for seed in (1, 2):
        frame = make_loans(TRAIN_ROWS, seed=seed)
        categorical = [c for c in features if frame[c].dtype.kind not in "biuf"]
        model = build_estimator(kind, seed, categorical)
        start = time.perf_counter()
        model.fit(frame[features], frame[label])
        fit_s.append(round(time.perf_counter() - start, 3))
        with mlflow.start_run(run_name=f"{name}-seed{seed}"):
            info = log_trained_model(model, "sklearn", frame[features].head(5), config)
        versions.append(str(mlflow.register_model(info.model_uri, name).version))
    client = MlflowClient()
    client.set_registered_model_alias(name, Alias.champion.value, versions[0])
    client.set_registered_model_alias(name, Alias.candidate.value, versions[1])
    floor = predict_floor(f"models:/{name}/{versions[0]}")
    result = {"name": name, "versions": versions, "floor": floor, "fit_s": fit_s}
    print(REGISTERED_PREFIX + json.dumps(result), flush=True)


def predict_floor(uri: str, calls: int = 300) -> dict[str, Any]:
    """The bare cost of one row in a plain process: ``pyfunc.predict`` and the raw ``predict_proba``."""
    import mlflow.pyfunc
    import pandas as pd

    from .registration import loan_row

    model = mlflow.pyfunc.load_model(uri)
    columns = [column.name for column in model.metadata.get_input_schema().inputs]
    raw = model.get_raw_model()
    row = loan_row()
    batch = [row] * BATCH_ROWS

    def frame(rows: list[dict[str, Any]], object_strings: bool = False) -> pd.DataFrame:
        built = pd.DataFrame.from_records(rows, columns=columns)
        if not object_strings:
            return built
        return built.astype({c: object for c in columns if built[c].dtype.kind not in "biuf"})

    found: dict[str, Any] = {"calls": calls, "batch_rows": BATCH_ROWS}
    # One row as the router scores it (pyfunc, pandas' default Arrow-backed strings); the estimator alone;
    # the estimator on object-dtype strings (no Arrow conversion); and BATCH_ROWS rows in one call (per call).
    for label, call in (
        ("pyfunc_predict", lambda: model.predict(frame([row]))),
        ("raw_predict_proba", lambda: raw.predict_proba(frame([row]))),
        ("raw_predict_proba_object_strings", lambda: raw.predict_proba(frame([row], True))),
        ("pyfunc_predict_batch_per_call", lambda: model.predict(frame(batch))),
    ):
        walls, cpus = [], []
        for index in range(calls + 30):
            start_cpu, start = time.process_time(), time.perf_counter()
            call()
            if index >= 30:
                walls.append((time.perf_counter() - start) * 1000)
                cpus.append((time.process_time() - start_cpu) * 1000)
        walls.sort()
        found[label] = {
            "wall_ms_median": round(statistics.median(walls), 3),
            "wall_ms_p99": round(walls[int(0.99 * len(walls)) - 1], 3),
            "cpu_ms_mean": round(statistics.fmean(cpus), 3),
        }
    return found


def split_body(row: dict[str, Any]) -> dict[str, Any]:
    """MLflow's scoring protocol, ``dataframe_split``, for one row (both servers get exactly this body)."""
    return {"dataframe_split": {"columns": list(row), "data": [list(row.values())]}}
