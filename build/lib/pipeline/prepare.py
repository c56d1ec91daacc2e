"""Prepare stage: load the table, validate it against the declared schema, fingerprint it, split it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from contracts.vocabulary import Task
from pipeline.config import ColumnType, DataSchema, DataSource, SplitConfig
from pipeline.tasks import check_labels


class DataError(Exception):
    """Data that cannot be read, or that violates the declared schema (then ``report`` says how)."""

    def __init__(self, message: str, report: ValidationReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ColumnProblem:
    """One kind of violation in one column, with how many rows it affects."""

    column: str
    problem: str
    rows: int
    examples: tuple[str, ...] = ()

    def describe(self) -> str:
        """One human line: column, problem, count, examples."""
        shown = f" e.g. {', '.join(self.examples)}" if self.examples else ""
        return f"{self.column}: {self.problem} in {self.rows} row(s){shown}"


@dataclass(frozen=True)
class ValidationReport:
    """What the validator found: per-column problems and the table's size."""

    rows: int
    columns: tuple[str, ...]
    problems: tuple[ColumnProblem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when the table satisfies the schema."""
        return not self.problems

    def to_dict(self) -> dict:
        """Plain data for logging as an artefact."""
        return {
            "rows": self.rows,
            "columns": list(self.columns),
            "ok": self.ok,
            "problems": [
                {"column": p.column, "problem": p.problem, "rows": p.rows, "examples": list(p.examples)}
                for p in self.problems
            ],
        }

    def describe(self) -> str:
        """A multi-line summary naming columns and counts."""
        if self.ok:
            return f"{self.rows} rows, {len(self.columns)} columns: valid"
        lines = [f"{self.rows} rows: {len(self.problems)} problem(s)"]
        lines += [f"  - {p.describe()}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class PreparedData:
    """The output of the prepare stage."""

    train: pd.DataFrame
    test: pd.DataFrame
    fingerprint: str
    report: ValidationReport


def _examples(values: pd.Series, limit: int = 3) -> tuple[str, ...]:
    return tuple(repr(v) for v in pd.unique(values)[:limit])


def validate_frame(frame: pd.DataFrame, schema: DataSchema, task: Task = Task.binary) -> ValidationReport:
    """Check columns, types, nulls, ranges and categories; report every violation with its row count."""
    problems: list[ColumnProblem] = []
    declared = list(schema.columns)
    missing = [c for c in declared if c not in frame.columns]
    extra = [c for c in frame.columns if c not in schema.columns]
    for column in missing:
        problems.append(ColumnProblem(column, "declared column is missing", len(frame)))
    for column in extra:
        problems.append(ColumnProblem(str(column), "column is not declared in the schema", len(frame)))
    for name, spec in schema.columns.items():
        if name not in frame.columns:
            continue
        series = frame[name]
        nulls = series.isna()
        if nulls.any() and not spec.nullable:
            problems.append(ColumnProblem(name, "missing value (column is not nullable)", int(nulls.sum())))
        present = series[~nulls]
        if spec.type in (ColumnType.integer, ColumnType.float):
            numeric = pd.to_numeric(present, errors="coerce")
            not_numeric = numeric.isna()
            if not_numeric.any():
                problems.append(
                    ColumnProblem(
                        name,
                        f"not a {spec.type.value}",
                        int(not_numeric.sum()),
                        _examples(present[not_numeric]),
                    )
                )
            numeric = numeric[~not_numeric]
            if spec.type == ColumnType.integer:
                fractional = numeric != np.floor(numeric)
                if fractional.any():
                    problems.append(
                        ColumnProblem(
                            name, "not an integer", int(fractional.sum()), _examples(numeric[fractional])
                        )
                    )
            if spec.min is not None:
                low = numeric < spec.min
                if low.any():
                    problems.append(
                        ColumnProblem(
                            name, f"below minimum {spec.min:g}", int(low.sum()), _examples(numeric[low])
                        )
                    )
            if spec.max is not None:
                high = numeric > spec.max
                if high.any():
                    problems.append(
                        ColumnProblem(
                            name, f"above maximum {spec.max:g}", int(high.sum()), _examples(numeric[high])
                        )
                    )
        elif spec.type == ColumnType.category:
            allowed = set(spec.categories or ())
            unknown = ~present.astype(str).isin(allowed)
            if unknown.any():
                problems.append(
                    ColumnProblem(
                        name,
                        f"category not in {sorted(allowed)}",
                        int(unknown.sum()),
                        _examples(present[unknown]),
                    )
                )
        elif spec.type == ColumnType.boolean:
            not_bool = ~present.isin([True, False, 0, 1])
            if not_bool.any():
                problems.append(
                    ColumnProblem(name, "not a boolean", int(not_bool.sum()), _examples(present[not_bool]))
                )
    if schema.label in frame.columns and not frame[schema.label].isna().any() and not frame.empty:
        problems.extend(
            ColumnProblem(schema.label, message, len(frame))
            for message in check_labels(task, frame[schema.label].to_numpy(), schema.label)
        )
    if frame.empty:
        problems.append(ColumnProblem("<table>", "no rows", 0))
    return ValidationReport(rows=len(frame), columns=tuple(map(str, frame.columns)), problems=tuple(problems))


def coerce_types(frame: pd.DataFrame, schema: DataSchema) -> pd.DataFrame:
    """Cast a validated frame to the declared types, columns in declaration order."""
    out = {}
    for name, spec in schema.columns.items():
        series = frame[name]
        if spec.type == ColumnType.integer:
            out[name] = pd.to_numeric(series).astype("int64")
        elif spec.type == ColumnType.float:
            out[name] = pd.to_numeric(series).astype("float64")
        elif spec.type == ColumnType.boolean:
            out[name] = series.astype(bool)
        else:
            out[name] = series.astype(str)
    return pd.DataFrame(out)


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """A content hash of the table: column names, dtypes and every value, independent of row index."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def split_frame(
    frame: pd.DataFrame, label: str, config: SplitConfig, task: Task = Task.binary
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic split: a seeded permutation, stratified on the label when asked (classification only)."""
    rng = np.random.default_rng(config.seed)
    test_index: list[np.ndarray] = []
    groups = (
        [frame.index.to_numpy()]
        if not config.stratify or task == Task.regression
        else [frame.index[frame[label] == value].to_numpy() for value in sorted(pd.unique(frame[label]))]
    )
    for group in groups:
        shuffled = rng.permutation(group)
        test_index.append(shuffled[: max(1, round(len(group) * config.test_fraction))])
    test_mask = frame.index.isin(np.concatenate(test_index))
    return frame[~test_mask].reset_index(drop=True), frame[test_mask].reset_index(drop=True)


def resolve_uri(uri: str, base_dir: Path) -> str:
    """Turn a path relative to the pipeline file into an absolute one; leave URIs with a scheme alone."""
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1:
        return uri
    path = Path(uri)
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def load_table(source: DataSource, base_dir: Path) -> tuple[pd.DataFrame, str]:
    """Read CSV or Parquet from a path or URI; return the frame and the resolved location."""
    location = resolve_uri(source.uri, base_dir)
    fmt = source.format
    if fmt == "auto":
        suffix = Path(urlparse(location).path).suffix.lower()
        fmt = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(suffix, "")  # type: ignore[assignment]
        if not fmt:
            raise DataError(
                f"data.uri: cannot tell the format of '{source.uri}'; set data.format to csv or parquet"
            )
    try:
        frame = pd.read_csv(location) if fmt == "csv" else pd.read_parquet(location)
    except FileNotFoundError:
        raise DataError(f"data.uri: no such file '{location}'") from None
    except ImportError as error:
        raise DataError(f"data.uri: cannot open '{location}': {error}") from None
    except Exception as error:  # the readers raise many types for unreadable input
        raise DataError(
            f"data.uri: cannot read '{location}' as {fmt}: {type(error).__name__}: {error}"
        ) from None
    return frame, location


def prepare_frame(
    frame: pd.DataFrame, schema: DataSchema, split: SplitConfig, task: Task = Task.binary
) -> PreparedData:
    """The pure core of the stage: validate, coerce, fingerprint and split, or raise with the report."""
    report = validate_frame(frame, schema, task)
    if not report.ok:
        raise DataError("data violates the declared schema:\n" + report.describe(), report)
    typed = coerce_types(frame, schema)
    train, test = split_frame(typed, schema.label, split, task)
    return PreparedData(train=train, test=test, fingerprint=fingerprint_frame(typed), report=report)
