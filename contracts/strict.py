"""The one strict base for every config and spec model, and the one way a validation error is shown."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for every config and spec model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def format_problems(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: ``<prefix><dotted.field.path>: message (got value)``.

    ``prefix`` is pasted before the path as given (``lockgate:`` for stack config keys); a value is shown
    when it is a scalar, so the line names both the field and what was wrong with it.
    """
    lines = []
    for item in error.errors():
        where = prefix + (".".join(str(part) for part in item["loc"]) or "<root>")
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
        lines.append(f"{where}: {message}{shown}")
    return lines
