"""Pure routing and request validation: which version answers, and whether a request body is acceptable."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from contracts.vocabulary import Role
from serving.spec import TrafficMode, TrafficSpec

_BUCKETS = 10_000


class RequestError(Exception):
    """A client error: the status code and a message that names the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sticky_bucket(key: str) -> float:
    """A stable position in [0, 100) for a request key: the same key always lands in the same place."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % _BUCKETS) * 100.0 / _BUCKETS


def choose_version(traffic: TrafficSpec, has_candidate: bool, sticky_key: str | None, draw: float) -> str:
    """Pick who answers. ``draw`` is uniform in [0, 100), used when no sticky key decides.

    Sticky assignment compares the key's fixed bucket with the weight, so raising the weight only moves
    keys from champion to candidate, never back. Shadow mode always answers from the champion.
    """
    if not has_candidate or traffic.mode == TrafficMode.shadow:
        return Role.champion
    position = sticky_bucket(sticky_key) if traffic.mode == TrafficMode.sticky and sticky_key else draw
    return Role.candidate if position < traffic.candidate_weight else Role.champion


def should_shadow(traffic: TrafficSpec, has_candidate: bool, draw: float) -> bool:
    """Whether this request is mirrored to the candidate (shadow mode only)."""
    return has_candidate and traffic.mode == TrafficMode.shadow and draw < traffic.shadow_percent


@dataclass(frozen=True)
class ColumnRule:
    """One input column as the model signature declares it."""

    name: str
    kind: str  # "integer", "number", "string", "boolean"


def rules_from_signature(input_schema: Any) -> tuple[ColumnRule, ...]:
    """Column rules from an MLflow input schema (ColSpec names and types)."""
    kinds = {
        "long": "integer",
        "integer": "integer",
        "double": "number",
        "float": "number",
        "string": "string",
        "boolean": "boolean",
    }
    rules = []
    for column in input_schema.inputs:
        type_name = getattr(column.type, "name", str(column.type)).lower()
        rules.append(ColumnRule(column.name, kinds.get(type_name, "string")))
    return tuple(rules)


def _reject_constant(value: str) -> None:
    raise ValueError(f"{value} is not valid JSON")


def parse_rows(body: bytes, rules: tuple[ColumnRule, ...], max_rows: int, max_body_bytes: int) -> list[dict]:
    """Validate a request body ``{"rows": [{column: value, ...}, ...]}`` against the signature."""
    if len(body) > max_body_bytes:
        raise RequestError(413, f"body is {len(body)} bytes, more than the limit of {max_body_bytes}")
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"malformed JSON: {error}") from None
    if not isinstance(payload, dict) or set(payload) != {"rows"}:
        raise RequestError(422, 'body must be a JSON object with exactly one key, "rows"')
    rows = payload["rows"]
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, '"rows" must be a non-empty list of objects')
    if len(rows) > max_rows:
        raise RequestError(413, f"{len(rows)} rows, more than the limit of {max_rows}")
    expected = {rule.name for rule in rules}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{index}] must be an object, got {type(row).__name__}")
        missing = sorted(expected - set(row))
        if missing:
            raise RequestError(422, f"rows[{index}] is missing column(s) {missing}")
        extra = sorted(set(row) - expected)
        if extra:
            raise RequestError(422, f"rows[{index}] has unknown column(s) {extra}")
        for rule in rules:
            _check_value(index, rule, row[rule.name])
    return rows


def _check_value(index: int, rule: ColumnRule, value: Any) -> None:
    where = f"rows[{index}].{rule.name}"
    if value is None:
        raise RequestError(422, f"{where} is null; the model needs a value")
    if rule.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(422, f"{where} must be an integer, got {type(value).__name__} {value!r}"[:300])
        if abs(value) > 2**53:
            raise RequestError(422, f"{where} is out of range")
    elif rule.kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(422, f"{where} must be a number, got {type(value).__name__} {value!r}"[:300])
        if not math.isfinite(value):
            raise RequestError(422, f"{where} must be finite")
    elif rule.kind == "boolean":
        if not isinstance(value, bool):
            raise RequestError(422, f"{where} must be true or false")
    elif not isinstance(value, str):
        raise RequestError(422, f"{where} must be a string, got {type(value).__name__}")
    elif len(value) > 1000:
        raise RequestError(422, f"{where} is longer than 1000 characters")
