"""The router's answer per row: its keys, and the binary probability that metrics, shadow and capture read.

An answer is a JSON object. A model that returns a frame answers with its columns (the built-in binary
classifier answers ``probability`` and ``prediction``); any other model answers ``prediction``, and a
classifier that can give class probabilities adds ``probabilities`` (class label to probability).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PREDICTION = "prediction"
PROBABILITY = "probability"  # the positive class's probability, of a binary classifier only
PROBABILITIES = "probabilities"


def binary_probability(answer: Mapping[str, Any]) -> float | None:
    """The answer's positive-class probability when it has a finite one in [0, 1], else None."""
    value = answer.get(PROBABILITY)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


MAX_CLASS_LABEL = 64
"""Longer class labels are cut in the predicted-class metric (a label is a metric tag: bounded)."""


def numeric_prediction(answer: Mapping[str, Any]) -> float | None:
    """A regression answer's finite value (``prediction`` a number, no class probabilities), else None."""
    if PROBABILITY in answer or PROBABILITIES in answer:
        return None
    value = answer.get(PREDICTION)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def class_label(answer: Mapping[str, Any]) -> str | None:
    """A classifier's predicted label (an answer with class probabilities), as a bounded tag value."""
    if PROBABILITIES not in answer or PREDICTION not in answer:
        return None
    return str(answer[PREDICTION])[:MAX_CLASS_LABEL]
