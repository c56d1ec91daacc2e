"""Pure routing and request validation: which version answers, and whether a request body is acceptable."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator
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
    """Column rules from an MLflow input schema (ColSpec names and types).

    The router validates every request against these rules, so a model without a column-based signature
    (none at all, or unnamed tensors) is refused when it loads, with a ValueError that says so.
    """
    if input_schema is None:
        raise ValueError("the model has no input signature: log it with one (columns and their types)")
    if input_schema.is_tensor_spec() or not input_schema.has_input_names():
        raise ValueError("the model's input signature is not named columns: the router serves tabular models")
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


FLOAT32_LIMIT = 3.4028234663852886e38
"""The largest magnitude a "number" column may carry: beyond it a float32 model computes inf, then NaN."""
INTEGER_LIMIT = 2**53
"""The largest magnitude an integer may carry: every integer up to it is exact as a double."""


async def read_bounded(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int) -> bytes:
    """A request body read chunk by chunk, stopping with a 413 as soon as it passes ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked body (no
    length declared) or one that lies about its length is cut off at the limit, never read whole.
    """
    if declared_length is not None:
        try:
            declared = int(declared_length)
        except ValueError:
            raise RequestError(400, f"Content-Length is not a number: {declared_length[:40]!r}") from None
        if declared > limit:
            raise RequestError(413, f"body is {declared} bytes, more than the limit of {limit}")
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise RequestError(413, f"body is more than the limit of {limit} bytes")
    return bytes(body)


def _reject_constant(value: str) -> None:
    raise ValueError(f"{value} is not valid JSON")


def _decode(body: bytes, max_body_bytes: int) -> Any:
    """The JSON body, refusing oversized bodies, malformed JSON and NaN/Infinity."""
    if len(body) > max_body_bytes:
        raise RequestError(413, f"body is {len(body)} bytes, more than the limit of {max_body_bytes}")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(400, f"malformed JSON: {error}") from None


def parse_rows(body: bytes, rules: tuple[ColumnRule, ...], max_rows: int, max_body_bytes: int) -> list[dict]:
    """Validate a request body ``{"rows": [{column: value, ...}, ...]}`` against the signature."""
    payload = _decode(body, max_body_bytes)
    if not isinstance(payload, dict) or set(payload) != {"rows"}:
        raise RequestError(422, 'body must be a JSON object with exactly one key, "rows"')
    return _check_records(payload["rows"], "rows", rules, max_rows)


# MLflow's scoring protocol (mlflow/pyfunc/scoring_server/__init__.py): exactly one of these keys.
INVOCATION_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_FORMATS_TEXT = ", ".join(f'"{name}"' for name in INVOCATION_FORMATS)


def parse_invocation(
    body: bytes, rules: tuple[ColumnRule, ...], max_rows: int, max_body_bytes: int
) -> list[dict]:
    """Validate an MLflow scoring request (``POST /invocations``) and return its rows as ``parse_rows`` does.

    Tabular shapes, as ``mlflow models serve`` accepts them: ``dataframe_split`` (``columns`` and ``data``,
    optional ``index``), ``dataframe_records`` (a list of objects), and ``instances`` or ``inputs`` (a list
    of objects, or an object of columns: equal-length lists, or single values for one row).
    """
    payload = _decode(body, max_body_bytes)
    if not isinstance(payload, dict):
        raise RequestError(422, f"body must be a JSON object with exactly one of {_FORMATS_TEXT}")
    given = [name for name in INVOCATION_FORMATS if name in payload]
    if len(given) != 1:
        found = f"found {given}" if given else f"found keys {sorted(payload)[:10]}"
        raise RequestError(422, f"body must have exactly one of {_FORMATS_TEXT}; {found}")
    name = given[0]
    others = sorted(set(payload) - {name, "params"})
    if others:
        raise RequestError(422, f'body has unknown key(s) {others} next to "{name}"')
    if payload.get("params"):
        raise RequestError(422, '"params" are not supported: the router scores with the model\'s defaults')
    data = payload[name]
    if name == "dataframe_split":
        return _split_rows(data, rules, max_rows)
    if name == "dataframe_records":
        return _check_records(data, name, rules, max_rows)
    if isinstance(data, dict):
        return _column_rows(data, name, rules, max_rows)
    if isinstance(data, list) and len(rules) == 1 and not any(isinstance(item, dict) for item in data):
        # As MLflow does for a one-column signature: a plain list holds that column's values.
        return _column_rows({rules[0].name: data}, name, rules, max_rows)
    return _check_records(data, name, rules, max_rows)


def _split_rows(data: Any, rules: tuple[ColumnRule, ...], max_rows: int) -> list[dict]:
    """Rows of a ``dataframe_split`` object: ``{"columns": [...], "data": [[...], ...], "index": [...]}``."""
    where = "dataframe_split"
    if not isinstance(data, dict):
        raise RequestError(422, f'"{where}" must be an object with "columns" and "data"')
    extra = sorted(set(data) - {"columns", "data", "index"})
    if extra:
        raise RequestError(
            422, f'"{where}" has unknown key(s) {extra}; it takes "columns", "data" and "index"'
        )
    columns, values = data.get("columns"), data.get("data")
    if not isinstance(columns, list) or not all(isinstance(column, str) for column in columns):
        raise RequestError(
            422, f"{where}.columns must be a list of column names (the model's signature names them)"
        )
    if len(set(columns)) != len(columns):
        raise RequestError(422, f"{where}.columns names a column more than once")
    _check_columns(set(columns), where + ".columns", rules)
    if not isinstance(values, list) or not values:
        raise RequestError(422, f"{where}.data must be a non-empty list of rows")
    if len(values) > max_rows:
        raise RequestError(413, f"{len(values)} rows, more than the limit of {max_rows}")
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(values)):
        raise RequestError(422, f"{where}.index must be a list with one entry per row of {where}.data")
    rows = []
    for position, row in enumerate(values):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(422, f"{where}.data[{position}] must be a list of {len(columns)} values")
        rows.append(dict(zip(columns, row, strict=True)))
    for position, row in enumerate(rows):
        for rule in rules:
            _check_value(f"{where}.data[{position}].{rule.name}", rule, row[rule.name])
    return rows


def _column_rows(data: dict, where: str, rules: tuple[ColumnRule, ...], max_rows: int) -> list[dict]:
    """Rows of an object of columns: ``{column: [values...]}``, or ``{column: value}`` for one row."""
    _check_columns(set(data), where, rules)
    lists = {column: isinstance(values, list) for column, values in data.items()}
    if not any(lists.values()):
        rows = [dict(data)]
    elif all(lists.values()):
        lengths = {column: len(values) for column, values in data.items()}
        if len(set(lengths.values())) != 1:
            raise RequestError(
                422, f"{where}: columns must have one value per row each, got lengths {lengths}"
            )
        count = next(iter(lengths.values()))
        if count == 0:
            raise RequestError(422, f"{where}: columns must hold at least one value")
        if count > max_rows:
            raise RequestError(413, f"{count} rows, more than the limit of {max_rows}")
        rows = [{column: values[position] for column, values in data.items()} for position in range(count)]
    else:
        scalars = sorted(column for column, is_list in lists.items() if not is_list)
        raise RequestError(
            422, f"{where}: either every column is a list of values or none is; {scalars} are not lists"
        )
    single = len(rows) == 1 and not any(lists.values())
    for position, row in enumerate(rows):
        for rule in rules:
            at = f"{where}.{rule.name}" if single else f"{where}.{rule.name}[{position}]"
            _check_value(at, rule, row[rule.name])
    return rows


def _check_columns(given: set[str], where: str, rules: tuple[ColumnRule, ...]) -> None:
    expected = {rule.name for rule in rules}
    missing = sorted(expected - given)
    if missing:
        raise RequestError(422, f"{where} is missing column(s) {missing}")
    extra = sorted(given - expected)
    if extra:
        raise RequestError(422, f"{where} has unknown column(s) {extra}")


def _check_records(records: Any, where: str, rules: tuple[ColumnRule, ...], max_rows: int) -> list[dict]:
    """A non-empty list of row objects, each with exactly the signature's columns and valid values."""
    if not isinstance(records, list) or not records:
        raise RequestError(422, f'"{where}" must be a non-empty list of objects')
    if len(records) > max_rows:
        raise RequestError(413, f"{len(records)} rows, more than the limit of {max_rows}")
    for index, row in enumerate(records):
        if not isinstance(row, dict):
            raise RequestError(422, f"{where}[{index}] must be an object, got {type(row).__name__}")
        _check_columns(set(row), f"{where}[{index}]", rules)
        for rule in rules:
            _check_value(f"{where}[{index}].{rule.name}", rule, row[rule.name])
    return records


def _check_value(where: str, rule: ColumnRule, value: Any) -> None:
    if value is None:
        raise RequestError(422, f"{where} is null; the model needs a value")
    if rule.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(422, f"{where} must be an integer, got {type(value).__name__} {value!r}"[:300])
        if abs(value) > INTEGER_LIMIT:
            raise RequestError(422, f"{where} is out of range (more than 2**53 in magnitude)")
    elif rule.kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(422, f"{where} must be a number, got {type(value).__name__} {value!r}"[:300])
        if isinstance(value, int):
            if abs(value) > INTEGER_LIMIT:  # also keeps 400-digit integers away from float conversion
                raise RequestError(422, f"{where} is out of range (more than 2**53 in magnitude)")
        elif not math.isfinite(value):
            raise RequestError(422, f"{where} must be finite")
        elif abs(value) > FLOAT32_LIMIT:
            raise RequestError(422, f"{where} is out of range ({value:g} overflows a float32 model)")
    elif rule.kind == "boolean":
        if not isinstance(value, bool):
            raise RequestError(422, f"{where} must be true or false")
    elif not isinstance(value, str):
        raise RequestError(422, f"{where} must be a string, got {type(value).__name__}")
    elif len(value) > 1000:
        raise RequestError(422, f"{where} is longer than 1000 characters")
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(422, f"{where} is not valid Unicode (a lone surrogate)") from None
