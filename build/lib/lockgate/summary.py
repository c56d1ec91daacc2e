"""What the registry holds for a model: versions, aliases, gate decisions and lineage, as data and as text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from contracts.vocabulary import Tag


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as the summary shows it."""

    version: str
    aliases: tuple[str, ...]
    run_id: str
    gates: dict[str, str]
    regression: str
    tags: dict[str, str]


def registry_summary(model_name: str) -> list[VersionSummary]:
    """Every version of a registered model, oldest first, with its aliases and gate results."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as error:
        # Only a model that does not exist has no versions; a refused login or a broken server is an error.
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name = '{model_name}'")
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = dict(mv.tags or {})
        gates = {
            key.removeprefix(Tag.gate_prefix): value
            for key, value in tags.items()
            if key.startswith(Tag.gate_prefix) and key.count(".") == 2
        }
        out.append(
            VersionSummary(
                version=str(mv.version),
                aliases=tuple(sorted(aliases.get(str(mv.version), []))),
                run_id=mv.run_id or "",
                gates=gates,
                regression=_regression_text(tags.get(Tag.gates, "[]")),
                tags=tags,
            )
        )
    return out


def _regression_text(gates_json: str) -> str:
    try:
        records: list[dict[str, Any]] = json.loads(gates_json)
    except json.JSONDecodeError:
        return ""
    for record in records:
        details = record.get("details", {})
        if record.get("gate") == "regression" and "delta" in details:
            return (
                f"{details.get('champion_version') and 'vs v' + str(details['champion_version'])} "
                f"Δ{details['delta']:+.4f} CI [{details['ci_low']:+.4f}, {details['ci_high']:+.4f}]"
            )
    return ""


def _short_commit(commit: str) -> str:
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def format_summary(model_name: str, versions: list[VersionSummary]) -> str:
    """A readable table of the registry state."""
    if not versions:
        return f"model {model_name}: no registered versions"
    lines = [f"model {model_name}:"]
    for item in versions:
        gates = " ".join(f"{k}={v}" for k, v in sorted(item.gates.items()))
        if item.tags.get(Tag.rollout):
            gates += f" rollout={item.tags[Tag.rollout]}"
        aliases = ",".join(item.aliases) or "-"
        extra = f"  [{item.regression}]" if item.regression else ""
        lines.append(f"  v{item.version:<3} aliases={aliases:<20} {gates}{extra}")
        lines.append(
            f"       lineage: commit={_short_commit(item.tags.get(Tag.git_commit, '?'))} "
            f"data={item.tags.get(Tag.data_fingerprint, '?')} "
            f"config={item.tags.get(Tag.config_hash, '?')} run={item.run_id}"
        )
    return "\n".join(lines)
