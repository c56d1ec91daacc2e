"""Vocabulary shared by the pipeline definition and the modules it declares (drift, triggers).

Column types and metric names. It imports nothing from the pipeline, so any module can use it without a cycle.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class ColumnType(StrEnum):
    """Logical column types the data validator understands."""

    integer = "integer"
    float = "float"
    category = "category"
    boolean = "boolean"


MetricName = Literal["auc", "accuracy", "f1", "log_loss", "brier"]
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier"})
