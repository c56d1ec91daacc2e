"""The classifier: feature encoding, the MLP, and the MLflow pyfunc wrapper that serves both together.

This module travels with every registered model (MLflow ``code_paths``), so it imports only numpy,
pandas, torch and mlflow: a model loads the same way in the pipeline, in serving and in a notebook.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

ENCODER_FILE = "encoder.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class FeatureEncoder:
    """Standardises numeric columns and one-hot encodes categorical ones, with statistics from training data."""

    numeric: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]
    hidden_units: tuple[int, ...]
    dropout: float

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        numeric: tuple[str, ...],
        categorical: dict[str, tuple[str, ...]],
        hidden_units: tuple[int, ...],
        dropout: float,
    ) -> FeatureEncoder:
        """Learn means and scales; categories come from the declared schema, not the sample."""
        values = frame[list(numeric)].to_numpy(dtype="float64") if numeric else np.zeros((len(frame), 0))
        scales = values.std(axis=0)
        return cls(
            numeric=tuple(numeric),
            means=tuple(float(v) for v in values.mean(axis=0)),
            scales=tuple(float(s) if s > 0 else 1.0 for s in scales),
            categorical=tuple((name, tuple(cats)) for name, cats in categorical.items()),
            hidden_units=tuple(hidden_units),
            dropout=dropout,
        )

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The raw columns the encoder reads."""
        return self.numeric + tuple(name for name, _ in self.categorical)

    @property
    def width(self) -> int:
        """Number of encoded features."""
        return len(self.numeric) + sum(len(cats) for _, cats in self.categorical)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode a frame into a float32 matrix; unknown categories encode as all zeros."""
        parts = []
        if self.numeric:
            values = frame[list(self.numeric)].to_numpy(dtype="float64")
            parts.append((values - np.array(self.means)) / np.array(self.scales))
        for name, cats in self.categorical:
            column = frame[name].astype(str).to_numpy()
            parts.append(np.stack([column == cat for cat in cats], axis=1).astype("float64"))
        return (
            np.concatenate(parts, axis=1).astype("float32") if parts else np.zeros((len(frame), 0), "float32")
        )

    @cached_property
    def _category_index(self) -> tuple[tuple[str, dict[str, int]], ...]:
        return tuple((name, {cat: i for i, cat in enumerate(cats)}) for name, cats in self.categorical)

    def transform_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Encode validated row dicts exactly as ``transform`` encodes the same rows as a frame.

        Serving's fast path: a few rows per request, where building a DataFrame costs more than the model.
        """
        count = len(records)
        parts = []
        if self.numeric:
            values = np.array([[row[c] for c in self.numeric] for row in records], dtype="float64")
            parts.append(
                (values.reshape(count, len(self.numeric)) - np.array(self.means)) / np.array(self.scales)
            )
        for name, index in self._category_index:
            onehot = np.zeros((count, len(index)), dtype="float64")
            for position, row in enumerate(records):
                slot = index.get(str(row[name]))
                if slot is not None:
                    onehot[position, slot] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1).astype("float32") if parts else np.zeros((count, 0), "float32")

    def to_json(self) -> str:
        """Serialise for the model artefact."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureEncoder:
        """Read back what ``to_json`` wrote."""
        raw = json.loads(text)
        return cls(
            numeric=tuple(raw["numeric"]),
            means=tuple(raw["means"]),
            scales=tuple(raw["scales"]),
            categorical=tuple((name, tuple(cats)) for name, cats in raw["categorical"]),
            hidden_units=tuple(raw["hidden_units"]),
            dropout=float(raw["dropout"]),
        )


def build_mlp(input_dim: int, hidden_units: tuple[int, ...], dropout: float) -> Any:
    """A feed-forward binary classifier returning logits."""
    import torch.nn as nn

    layers: list[Any] = []
    width = input_dim
    for units in hidden_units:
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
        width = units
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def predict_proba(network: Any, matrix: np.ndarray) -> np.ndarray:
    """Probabilities of the positive class, in eval mode, without gradients."""
    import torch

    network.eval()
    with torch.inference_mode():
        logits = network(torch.from_numpy(matrix)).squeeze(-1)
        return torch.sigmoid(logits).numpy().astype("float64")


class TabularClassifier(PythonModel):
    """MLflow pyfunc: raw rows in, default probability and 0/1 prediction out."""

    def load_context(self, context: Any) -> None:
        """Rebuild the encoder and the network from the model's artefacts."""
        import torch

        self.encoder = FeatureEncoder.from_json(Path(context.artifacts["encoder"]).read_text())
        self.network = build_mlp(self.encoder.width, self.encoder.hidden_units, self.encoder.dropout)
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.network.load_state_dict(state)
        self.network.eval()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Score rows: ``probability`` of the positive class and ``prediction`` at 0.5."""
        probability = predict_proba(self.network, self.encoder.transform(model_input))
        return pd.DataFrame({"probability": probability, "prediction": (probability >= 0.5).astype("int64")})

    def predict_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The same answer as ``predict`` for rows already validated against the signature, without pandas.

        Serving calls this when the loaded model offers it; ``predict`` stays the pyfunc contract.
        """
        probability = predict_proba(self.network, self.encoder.transform_records(records))
        return [{"probability": float(p), "prediction": int(p >= 0.5)} for p in probability]
