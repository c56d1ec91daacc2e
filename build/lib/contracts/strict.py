"""The one strict base for every config and spec model, and the one way a validation error is shown."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for every config and spec model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Problems(ValueError):
    """Several problems found by one cross-field check, each already ``field.path: message``.

    Raised from a model validator, it reaches :func:`format_problems` as one pydantic error that is shown
    as one line per problem, each under its own path, instead of one ``<root>`` line.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def format_problems(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: ``<prefix><dotted.field.path>: message (got value)``.

    ``prefix`` is pasted before the path as given (``lockgate:`` for stack config keys); a value is shown
    when it is a scalar, so the line names both the field and what was wrong with it.
    """
    lines: list[str] = []
    for item in error.errors():
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, Problems) and not item["loc"]:
            lines.extend(prefix + problem for problem in cause.problems)
            continue
        where = prefix + (".".join(str(part) for part in item["loc"]) or "<root>")
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
        lines.append(f"{where}: {message}{shown}")
    return lines
