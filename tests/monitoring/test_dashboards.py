"""Grafana dashboards: valid JSON, unique ids, a datasource variable, PromQL that parses, contract metrics only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import DASHBOARD_FILES, MONITORING, require_tool, run_tool

# The metric contract of issue 5. Histograms expose _bucket, _sum and _count; the contract names the
# prediction histogram by its buckets only, so that is all a dashboard may use of it.
CONTRACT_METRICS = {
    "ray_lockgate_requests_total",
    "ray_lockgate_request_latency_seconds_bucket",
    "ray_lockgate_request_latency_seconds_sum",
    "ray_lockgate_request_latency_seconds_count",
    "ray_lockgate_prediction_bucket",
    "ray_lockgate_rejected_requests_total",
    "lockgate_pipeline_runs_total",
    "lockgate_pipeline_stage_duration_seconds",
    "lockgate_pipeline_duration_seconds",
    "lockgate_pipeline_cost_estimate",
    "lockgate_rollouts_total",
    "lockgate_triggers_total",
    "lockgate_drift_score",
    "lockgate_drift_detected",
    "lockgate_model_quality",
    "lockgate_last_event_timestamp_seconds",
}
# Grafana's built-in variables become values PromQL accepts; dashboard variables become "match anything".
BUILTIN_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}
KEYWORDS |= {"inf", "nan"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels including those nested in collapsed rows."""
    return [inner for panel in panels for inner in [panel, *all_panels(panel.get("panels", []))]]


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every query target and every Prometheus annotation query in a dashboard."""
    return [
        (f"panel {panel['id']} ({panel['title']}) target {target['refId']}", target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ] + [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]


def substitute_variables(expr: str) -> str:
    """The expression with Grafana variables replaced so that promtool can parse it."""

    def value(match: re.Match[str]) -> str:
        return BUILTIN_VARIABLES.get(match.group(1) or match.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, labels or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", text)
    return {name for name in names if name.lower() not in KEYWORDS}


@pytest.fixture(params=DASHBOARD_FILES, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_the_two_dashboards_exist_with_unique_uids() -> None:
    uids = [load(path)["uid"] for path in DASHBOARD_FILES]
    assert sorted(uids) == ["lockgate-pipeline-delivery", "lockgate-serving"], f"unexpected dashboards {uids}"


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36, "expected a current Grafana schema"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    datasource = variables.get("datasource", {})
    assert (datasource.get("type"), datasource.get("query")) == ("datasource", "prometheus")
    panels = all_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"expected unique panel ids, got {ids}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']} has no query"
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, f"panel {panel['title']} overflows"


def test_dashboard_uses_contract_metrics_only(dashboard: dict[str, Any]) -> None:
    for where, expr in expressions(dashboard):
        names = metric_names(substitute_variables(expr))
        assert names, f"{where}: expected at least one metric in {expr!r}"
        assert names <= CONTRACT_METRICS, f"{where}: metrics outside the contract: {names - CONTRACT_METRICS}"


def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    # Given every query as a recording rule, so that promtool parses it
    rules = [
        {"record": f"dashboard:query_{index}", "expr": substitute_variables(expr)}
        for index, (_, expr) in enumerate(expressions(dashboard))
    ]
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": dashboard["uid"], "rules": rules}]}))
    # Then promtool accepts them all
    result = run_tool(promtool, "check", "rules", path)
    assert result.returncode == 0, f"promtool rejected a query of {dashboard['uid']}:\n{result.stdout}"


def test_metric_names_finds_selectors_not_labels_or_functions() -> None:
    expr = (
        'sum by (version, le) (rate(ray_x_bucket{status="error", le!="a b"}[5m])) / on (version) up offset 5m'
    )
    assert metric_names(expr) == {"ray_x_bucket", "up"}


def test_an_unknown_metric_and_a_bad_query_are_caught(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    assert not metric_names("rate(ray_lockgate_request_total[5m])") <= CONTRACT_METRICS
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum by (("}]}]})
    )
    assert run_tool(promtool, "check", "rules", path).returncode != 0


def panel(dashboard: dict[str, Any], metric: str) -> dict[str, Any]:
    """The one panel whose query reads ``metric``."""
    found = [
        p for p in all_panels(dashboard["panels"]) if any(metric in t["expr"] for t in p.get("targets", []))
    ]
    assert len(found) == 1, f"expected one panel reading {metric}, got {[p['title'] for p in found]}"
    return found[0]


def test_psi_has_no_upper_bound_and_a_line_at_the_policy_bound() -> None:
    from pipeline.config.drift import DriftConfig

    # Given the drift panel of the pipeline dashboard
    defaults = panel(load(MONITORING / "dashboards" / "pipeline.json"), "lockgate_drift_score")[
        "fieldConfig"
    ]["defaults"]
    # Then PSI is a plain number (percentunit would cap the reading at 100%) with no max
    assert defaults["unit"] not in ("percentunit", "percent") and "max" not in defaults, defaults
    # And a threshold line sits at the pipeline's default PSI bound
    steps = [step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None]
    assert steps == [DriftConfig().psi_threshold], f"expected a line at {DriftConfig().psi_threshold}"
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area", "dashed+area")


def test_cost_is_shown_in_the_pipelines_currency() -> None:
    import yaml as pyyaml

    from pipeline.config import parse_config

    config = parse_config(
        pyyaml.safe_load((MONITORING.parent / "pipeline.yaml").read_text()), "pipeline.yaml"
    )
    cost = panel(load(MONITORING / "dashboards" / "pipeline.json"), "lockgate_pipeline_cost_estimate")
    assert cost["fieldConfig"]["defaults"]["unit"] == f"currency{config.cost.currency}", (
        "Grafana's currency unit"
    )
    assert config.cost.currency in cost["title"], "the currency named in the title"


def test_rollout_promotion_and_rollback_are_annotations(dashboard: dict[str, Any]) -> None:
    queries = {a["name"]: a for a in dashboard["annotations"]["list"] if "expr" in a}
    assert set(queries) == {"Rollout steps", "Promotions", "Rollbacks"}, f"annotations: {sorted(queries)}"
    assert 'type="rollout_step"' in queries["Rollout steps"]["expr"], (
        "a rollout step moves the event timestamp"
    )
    assert 'outcome="promoted"' in queries["Promotions"]["expr"], "promotions counted by the exporter"
    assert "rolled_back" in queries["Rollbacks"]["expr"], "rollbacks counted by the exporter"
    for annotation in queries.values():
        assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, annotation["name"]
        assert annotation["enable"] and annotation["iconColor"], f"{annotation['name']}: shown, coloured"


def test_the_two_dashboards_link_to_each_other() -> None:
    dashboards = {load(path)["uid"]: load(path) for path in DASHBOARD_FILES}
    for uid, dashboard in dashboards.items():
        (other,) = set(dashboards) - {uid}
        urls = [link["url"] for link in dashboard["links"] if link["type"] == "link"]
        assert urls == [f"/d/{other}"], f"{uid}: expected a link to {other}, got {urls}"
        assert all(link["keepTime"] for link in dashboard["links"]), f"{uid}: links keep the time range"
