"""The packaged model: the encoder round-trips and the network scores rows."""

from __future__ import annotations

import numpy as np

from pipeline.config import load_config
from pipeline.data import make_loans
from pipeline.model import FeatureEncoder, TabularClassifier, build_mlp, predict_proba
from pipeline.train import encode_training_data
from tests.conftest import ROOT


def test_encoder_round_trip_and_shape() -> None:
    config = load_config(ROOT / "pipeline.yaml")
    frame = make_loans(1_000, seed=0)
    data = encode_training_data(frame, config)
    restored = FeatureEncoder.from_json(data.encoder.to_json())
    assert restored == data.encoder
    assert data.x_train.shape[1] == data.encoder.width == 7 + 4 + 4
    assert abs(data.x_train[:, 0].mean()) < 0.1, "numeric columns are standardised"
    unknown = frame.head(2).assign(region="atlantis")
    assert restored.transform(unknown)[:, 7:11].sum() == 0, "unknown categories encode as zeros"


def test_network_outputs_probabilities() -> None:
    network = build_mlp(5, (8,), 0.0)
    p = predict_proba(network, np.random.default_rng(0).normal(size=(10, 5)).astype("float32"))
    assert p.shape == (10,) and ((p > 0) & (p < 1)).all()


def test_record_path_scores_exactly_as_the_pyfunc_path() -> None:
    config = load_config(ROOT / "pipeline.yaml")
    frame = make_loans(500, seed=3)
    data = encode_training_data(frame, config)
    model = TabularClassifier()
    model.encoder = data.encoder
    model.network = build_mlp(data.encoder.width, (16,), 0.0)
    features = frame[list(data.encoder.input_columns)].assign(region=["atlantis"] + ["north"] * 499)
    records = features.to_dict("records")
    assert np.array_equal(data.encoder.transform_records(records), data.encoder.transform(features))
    expected = model.predict(None, features)
    answered = model.predict_records(records)
    assert [a["prediction"] for a in answered] == expected["prediction"].tolist()
    assert np.array_equal([a["probability"] for a in answered], expected["probability"].to_numpy())
    single = model.predict_records(records[:1])[0]["probability"]
    assert abs(single - answered[0]["probability"]) < 1e-6, "one row scores as it does in a batch"
