"""The packaged model: the encoder round-trips and the network scores rows."""

from __future__ import annotations

import numpy as np

from pipeline.config import load_config
from pipeline.data import make_loans
from pipeline.model import FeatureEncoder, build_mlp, predict_proba
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
