"""Any registered model through the router: plain scikit-learn models, and MLflow's own scoring protocol.

The models here are logged with ``mlflow.sklearn.log_model`` alone, outside Lockgate's pipeline. Each of
MLflow's request formats is sent both to the router's ``/invocations`` and to a real ``mlflow models serve``
of the same registered version: the predictions must be the same.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.models import infer_signature
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

from pipeline.data import make_loans
from serving.app import SPLIT_HEADER, VERSION_HEADER
from serving.metrics import VersionStats, scrape_version_stats
from serving.spec import ModelRef, ServingSpec, TrafficMode, TrafficSpec
from tests.conftest import remove_serve_applications
from tests.serving.conftest import SERVE_PORT, Deployed, register_version

pytestmark = pytest.mark.e2e

URL = f"http://127.0.0.1:{SERVE_PORT}/"
INVOCATIONS = URL + "invocations"
# skops (MLflow's default format for scikit-learn) loads tree ensembles only when their node storage is trusted.
TRUSTED = ["sklearn.tree._tree.Tree"]


def features(rows: int, seed: int) -> pd.DataFrame:
    """Synthetic tabular data: two floats and an integer count."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.normal(size=rows),
            "x2": rng.uniform(-2, 2, size=rows),
            "visits": rng.integers(0, 20, size=rows).astype("int64"),
        }
    )


TRAIN = features(400, seed=0)
CLASSES = np.array(["low", "mid", "high"])
LABELS = CLASSES[np.digitize(TRAIN["x1"] + 0.5 * TRAIN["x2"] + 0.05 * TRAIN["visits"], [-0.3, 0.9])]
TARGET = 3 * TRAIN["x1"] - TRAIN["x2"] ** 2 + 0.1 * TRAIN["visits"]
QUERY = features(6, seed=7)
RECORDS: list[dict[str, Any]] = [
    {name: (value.item() if hasattr(value, "item") else value) for name, value in row.items()}
    for row in QUERY.to_dict("records")
]
COLUMNS = ["visits", "x2", "x1"]  # not the signature's order: both servers must reorder


def scoring_requests() -> dict[str, dict[str, Any]]:
    """The same six rows in each of MLflow's JSON formats."""
    return {
        "dataframe_split": {
            "dataframe_split": {"columns": COLUMNS, "data": [[row[c] for c in COLUMNS] for row in RECORDS]}
        },
        "dataframe_records": {"dataframe_records": RECORDS},
        "instances": {"instances": RECORDS},
        "inputs-records": {"inputs": RECORDS},
        "inputs-columns": {"inputs": {c: [row[c] for row in RECORDS] for c in COLUMNS}},
    }


def register_sklearn(name: str, estimator: Any, target: Any) -> ModelRef:
    """Fit and register a scikit-learn model the plain MLflow way: log_model with a signature."""
    estimator.fit(TRAIN, target)
    mlflow.set_experiment("any-model-tests")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(TRAIN, estimator.predict(TRAIN)),
            pip_requirements=["scikit-learn"],
            skops_trusted_types=TRUSTED,
        )
    version = mlflow.register_model(info.model_uri, name)
    return ModelRef(name=name, version=str(version.version))


@pytest.fixture(scope="module")
def models(local_env) -> dict[str, ModelRef]:
    """Two versions of a three-class classifier (string labels) and a regressor, registered outside Lockgate."""
    suffix = uuid.uuid4().hex[:6]
    return {
        "classifier": register_sklearn(f"clf-{suffix}", GradientBoostingClassifier(n_estimators=30), LABELS),
        "classifier-2": register_sklearn(
            f"clf-{suffix}", GradientBoostingClassifier(n_estimators=15, random_state=2), LABELS
        ),
        "regressor": register_sklearn(f"reg-{suffix}", GradientBoostingRegressor(n_estimators=30), TARGET),
    }


@pytest.fixture(scope="module")
def router(local_env) -> Iterator[Any]:
    """A way to serve any champion (and candidate) on the session's Serve; removed at the end."""
    spec = ServingSpec(
        app_name="lockgate-test", http_port=SERVE_PORT, replica_num_cpus=0.25, max_ongoing_requests=64
    )

    def serve(
        champion: ModelRef,
        candidate: ModelRef | None = None,
        traffic: TrafficSpec | None = None,
        probe: list[dict[str, Any]] | None = None,
    ) -> None:
        Deployed(local_env, spec, champion, candidate, URL).apply(traffic or TrafficSpec())
        # A new champion is loaded by reconfigure(): wait until it answers (model and version in the body).
        deadline, answered = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            response = requests.post(URL, json={"rows": probe or RECORDS[:1]}, timeout=30)
            if response.status_code == 200:
                answered = (response.json()["model"], response.json()["version"])
                if answered == (champion.name, champion.version):
                    return
            time.sleep(0.5)
        pytest.fail(f"{champion.uri} not answering after 120 s; last answer from {answered}")

    try:
        yield serve
    finally:
        remove_serve_applications(local_env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def mlflow_serve(ref: ModelRef, log_dir: Path) -> Iterator[str]:
    """A real `mlflow models serve` of the version on 127.0.0.1, stopped by its PID (and process group)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", ref.uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_path = log_dir / f"mlflow-serve-{ref.name}-{ref.version}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.poll() is None, f"mlflow models serve exited: {log_path.read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"mlflow models serve not ready in 240 s: {log_path.read_text()[-3000:]}")
        yield url
    finally:
        # uvicorn runs as its child; the whole group started with it stops together.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def invocation_predictions(url: str, payload: dict[str, Any]) -> tuple[list[Any], requests.Response]:
    response = requests.post(url, json=payload, timeout=30)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:500]}"
    return response.json()["predictions"], response


def test_a_plain_classifier_answers_labels_and_probabilities_in_every_format(
    models, router, tmp_path
) -> None:
    # Given a scikit-learn classifier registered outside Lockgate, served by the router and by MLflow,
    ref = models["classifier"]
    router(ref)
    native = mlflow.sklearn.load_model(ref.uri)
    expected_labels = native.predict(QUERY).tolist()
    expected_probabilities = native.predict_proba(QUERY)
    # when the router is asked with {"rows": ...},
    response = requests.post(URL, json={"rows": RECORDS}, timeout=30)
    # then each row has the model's label and the class probabilities of predict_proba,
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["prediction"] for a in answers] == expected_labels, answers
    for answer, row in zip(answers, expected_probabilities, strict=True):
        expected = dict(zip(native.classes_.tolist(), row.tolist(), strict=True))
        assert answer["probabilities"] == pytest.approx(expected, abs=1e-9), answer
        assert set(answer) == {"prediction", "probabilities"}, f"no binary probability key: {answer}"
    assert response.headers[VERSION_HEADER] == ref.version, "the version that answered is in the header"
    # and every MLflow format gets exactly what `mlflow models serve` answers, with Lockgate's headers.
    with mlflow_serve(ref, tmp_path) as mlflow_url:
        for label, payload in scoring_requests().items():
            theirs, _ = invocation_predictions(f"{mlflow_url}/invocations", payload)
            ours, answered = invocation_predictions(INVOCATIONS, payload)
            assert ours == theirs == expected_labels, f"{label}: router {ours}, mlflow {theirs}"
            assert answered.headers[VERSION_HEADER] == ref.version, f"{label}: {answered.headers}"
            assert answered.headers[SPLIT_HEADER] == "weighted:0", f"{label}: {answered.headers}"
            assert answered.headers["x-request-id"], f"{label}: every answer carries a request id"
            assert set(answered.json()) == {"predictions"}, (
                f"{label}: the body is MLflow's: {answered.json()}"
            )


def test_a_plain_regressor_answers_values_equal_to_mlflow_serve(models, router, tmp_path) -> None:
    # Given a scikit-learn regressor served by the router and by MLflow,
    ref = models["regressor"]
    router(ref)
    expected = mlflow.sklearn.load_model(ref.uri).predict(QUERY).tolist()
    # when both are asked the same in every format (and the router with {"rows": ...} too),
    rows = requests.post(URL, json={"rows": RECORDS}, timeout=30)
    assert rows.status_code == 200, rows.text
    assert [a["prediction"] for a in rows.json()["predictions"]] == pytest.approx(expected, abs=1e-9)
    assert all(set(a) == {"prediction"} for a in rows.json()["predictions"]), (
        "a regressor gives no probabilities"
    )
    with mlflow_serve(ref, tmp_path) as mlflow_url:
        for label, payload in scoring_requests().items():
            theirs, _ = invocation_predictions(f"{mlflow_url}/invocations", payload)
            ours, _ = invocation_predictions(INVOCATIONS, payload)
            # then the values agree with MLflow's to 1e-9.
            assert ours == pytest.approx(theirs, abs=1e-9), f"{label}: router {ours}, mlflow {theirs}"
            assert ours == pytest.approx(expected, abs=1e-9), f"{label}: {ours} vs the model's {expected}"


def test_bad_invocations_are_refused_with_the_column_named_and_health_answers(models, router) -> None:
    # Given the regressor served,
    router(models["regressor"])
    bad = [
        ({"inputs": [{**RECORDS[0], "visits": 2.5}]}, 422, "inputs[0].visits must be an integer"),
        (
            {"dataframe_split": {"columns": ["x1", "x2"], "data": [[1.0, 2.0]]}},
            422,
            "missing column(s) ['visits']",
        ),
        ({"dataframe_records": [RECORDS[0]], "inputs": [RECORDS[0]]}, 422, "exactly one of"),
        ({"inputs": {"x1": [1.0], "x2": [1.0, 2.0], "visits": [1]}}, 422, "one value per row each"),
        ({"instances": [RECORDS[0]] * 1001}, 413, "more than the limit of 1000"),
    ]
    with requests.Session() as session:
        # when malformed MLflow requests arrive,
        for payload, status, fragment in bad:
            response = session.post(INVOCATIONS, json=payload, timeout=30)
            # then each is refused with a message naming the problem, and the service keeps answering.
            assert response.status_code == status, f"{fragment}: {response.status_code} {response.text[:300]}"
            assert fragment in response.json()["error"], response.json()
        assert session.get(URL + "ping", timeout=10).status_code == 200, "GET ping answers, as MLflow's does"
        assert session.get(URL, timeout=10).status_code == 405, "GET on the scoring route is still refused"
        ok = session.post(INVOCATIONS, json={"inputs": RECORDS[:1]}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1, ok.text


def test_shadowing_a_non_binary_candidate_counts_requests_without_divergence(
    models, router, local_env
) -> None:
    # Given two classifier versions, the second mirrored in shadow mode to every request,
    champion, candidate = models["classifier"], models["classifier-2"]
    router(champion, candidate, TrafficSpec(mode=TrafficMode.shadow, shadow_percent=100))

    def stats(ref: ModelRef, role: str) -> VersionStats:
        return scrape_version_stats(local_env.metrics_url).get((ref.version, role), VersionStats())

    before_shadow, before_champion = stats(candidate, "shadow"), stats(champion, "champion")
    # when 40 requests are answered,
    with requests.Session() as session:
        statuses = [
            session.post(INVOCATIONS, json={"inputs": RECORDS}, timeout=30).status_code for _ in range(40)
        ]
    assert statuses == [200] * 40, f"every request answered: {statuses}"
    deadline, mirrored, answered = time.monotonic() + 90, 0.0, 0.0
    while time.monotonic() < deadline:
        shadow_now, champion_now = stats(candidate, "shadow"), stats(champion, "champion")
        mirrored, answered = shadow_now.ok - before_shadow.ok, champion_now.ok - before_champion.ok
        if mirrored >= 40 and answered >= 40:
            break
        time.sleep(1)
    # then both versions' requests are counted, and no binary prediction was observed for either.
    assert mirrored >= 40 and answered >= 40, f"40 mirrored and 40 answered, saw {mirrored} and {answered}"
    assert shadow_now.errors == before_shadow.errors, "the shadow scored without errors"
    assert champion_now.prediction_count == before_champion.prediction_count, "no probability histogram"
    # and each version's predicted classes are counted, which the rollout's class-share analysis reads.
    answered_classes = sum(champion_now.class_counts.values()) - sum(before_champion.class_counts.values())
    assert answered_classes >= 40 * len(RECORDS), f"predicted classes counted: {champion_now.class_counts}"


def test_a_regressors_values_reach_the_rollout_analysis_as_exact_moments(models, router, local_env) -> None:
    # Given the regressor served as champion,
    ref = models["regressor"]
    router(ref)

    def stats() -> VersionStats:
        return scrape_version_stats(local_env.metrics_url).get((ref.version, "champion"), VersionStats())

    # (the router's readiness probe was answered too: wait until what it exported has settled)
    before = stats()
    for _ in range(30):
        time.sleep(2.5)  # Ray exports metrics every 2 s here (RAY_metrics_report_interval_ms)
        settled = stats()
        if settled.value_count == before.value_count:
            break
        before = settled
    # when 30 requests are answered,
    values: list[float] = []
    with requests.Session() as session:
        for _ in range(30):
            answered = session.post(URL, json={"rows": RECORDS}, timeout=30)
            assert answered.status_code == 200, answered.text
            values += [a["prediction"] for a in answered.json()["predictions"]]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and stats().value_count - before.value_count < len(values):
        time.sleep(1)
    # then the metrics hold their count and mean exactly (what the standardised-shift analysis judges).
    now = stats()
    count = now.value_count - before.value_count
    total = (now.value_mean * now.value_count) - (
        before.value_mean * before.value_count if before.value_count else 0.0
    )
    assert count == len(values), f"{len(values)} values answered, {count} counted"
    assert total / count == pytest.approx(float(np.mean(values)), rel=1e-6), "the mean of what was answered"


def test_the_built_in_classifier_answers_invocations_as_mlflow_serve_does(
    local_env, router, tmp_path
) -> None:
    # Given Lockgate's own binary classifier (a pyfunc returning a DataFrame, with a record-level fast path),
    ref = register_version(f"mlp-{uuid.uuid4().hex[:6]}", seed=3)
    loan = make_loans(1, seed=9).drop(columns="default").iloc[0]
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in loan.items()}
    router(ref, probe=[row])
    payload = {"dataframe_records": [row, row]}
    # when the router's /invocations and `mlflow models serve` score the same rows,
    ours, _ = invocation_predictions(INVOCATIONS, payload)
    rows = requests.post(URL, json={"rows": [row, row]}, timeout=30)
    with mlflow_serve(ref, tmp_path) as mlflow_url:
        theirs, _ = invocation_predictions(f"{mlflow_url}/invocations", payload)
    # then both answer the frame's records, and {"rows": ...} answers exactly those too.
    assert [set(p) for p in ours] == [{"probability", "prediction"}] * 2, ours
    assert [p["prediction"] for p in ours] == [p["prediction"] for p in theirs], f"{ours} vs {theirs}"
    assert [p["probability"] for p in ours] == pytest.approx([p["probability"] for p in theirs], abs=1e-9)
    assert rows.status_code == 200 and rows.json()["predictions"] == ours, rows.text
