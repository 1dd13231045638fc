"""The generated Grafana dashboard: structure operators rely on, and the committed copy is fresh."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from metrics import build, dashboard

BUILT = dashboard.build()
PANELS = [p for p in BUILT["panels"] if p["type"] != "row"]
EXPRS = dashboard.expressions(BUILT)
# Gauges read from the database: every worker reports the same value, so summing them multiplies it.
DATABASE_GAUGES = (
    "dialer_due_backlog",
    "dialer_oldest_due_timestamp_seconds",
    "dialer_held_back",
    "dialer_live_attempts",
    "dialer_campaign_max_concurrent_calls",
    "dialer_workers",
    "dialer_webhook_backlog",
    "dialer_webhook_oldest_pending_timestamp_seconds",
    "dialer_dial_ratio",
    "dialer_hit_rate",
    "dialer_abandon_rate",
    "dialer_agents",
    "dialer_agent_occupancy",
)


def test_identity_and_schema() -> None:
    """The dashboard has the stable uid pgdialer and a Grafana 10/11 schema version."""
    assert BUILT["uid"] == "pgdialer"
    assert 36 <= BUILT["schemaVersion"] <= 41


def test_datasource_and_campaign_variables() -> None:
    """A datasource variable selects the Prometheus, and campaign lists label_values of started attempts."""
    variables = {v["name"]: v for v in BUILT["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    campaign = variables["campaign"]
    assert campaign["definition"] == "label_values(dialer_attempts_started_total, campaign)"
    assert campaign["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    """No panel is pinned to one Prometheus: panels and targets use ${datasource}."""
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_panel_has_a_unit_a_description_and_targets() -> None:
    """Every panel tells the reader its unit and what it shows, and queries something."""
    for panel in PANELS:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert len(panel["description"]) > 20, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_ids_are_unique() -> None:
    """Panel and row ids are unique (Grafana keys links and state by id)."""
    ids = [p["id"] for p in BUILT["panels"]]
    assert len(ids) == len(set(ids))


def _cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
    g = panel["gridPos"]
    return {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}


def test_panels_are_placed_inside_the_grid_without_overlapping() -> None:
    """Every panel has a gridPos inside the 24-column grid and no two panels overlap."""
    for panel in BUILT["panels"]:
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0
        assert g["x"] + g["w"] <= 24, panel["title"]
    for a, b in itertools.combinations(BUILT["panels"], 2):
        assert not _cells(a) & _cells(b), (a["title"], b["title"])


def test_required_rows_are_present() -> None:
    """The rows operators asked for exist: throughput, capacity, provider, callbacks, webhooks, pacing, API."""
    rows = {p["title"] for p in BUILT["panels"] if p["type"] == "row"}
    assert {
        "Throughput and outcomes",
        "Capacity and backlog",
        "Provider",
        "Callbacks and writes",
        "Webhook delivery",
        "Predictive pacing",
        "Upstream API",
    } <= rows


def test_database_gauges_are_never_summed_across_workers() -> None:
    """Backlog, cap and pacing gauges are taken with max, never summed directly over workers."""
    for expr, name in itertools.product(EXPRS, DATABASE_GAUGES):
        if re.search(rf"\b{name}\b", expr):
            assert not re.search(rf"sum(\s+by\s*\([^)]*\))?\s*\(\s*(rate\()?{name}\b", expr), expr
            assert "max" in expr, expr


def test_rates_use_the_rate_interval() -> None:
    """rate() and increase() ranges are $__rate_interval, so panels work at any scrape interval."""
    for expr in EXPRS:
        for window in re.findall(r"\b(?:rate|increase)\([^\[]*\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", expr


def test_panels_cover_the_required_metrics() -> None:
    """Throughput, caps, backlog, latency, circuits, held-back, callbacks, webhooks, pacing and API are charted."""
    names = set().union(*(build.metric_names(e) for e in EXPRS))
    for required in (
        "dialer_attempts_started_total",
        "dialer_outcomes_total",
        "dialer_live_attempts",
        "dialer_campaign_max_concurrent_calls",
        "dialer_due_backlog",
        "dialer_oldest_due_timestamp_seconds",
        "dialer_provider_request_seconds_bucket",
        "dialer_provider_errors_total",
        "dialer_circuit_open",
        "dialer_held_back",
        "dialer_callback_seconds_bucket",
        "dialer_callback_lag_seconds_bucket",
        "dialer_flush_seconds_bucket",
        "dialer_webhook_deliveries_total",
        "dialer_webhook_backlog",
        "dialer_webhook_oldest_pending_timestamp_seconds",
        "dialer_webhook_delivery_seconds_bucket",
        "dialer_workers",
        "dialer_dial_ratio",
        "dialer_hit_rate",
        "dialer_abandon_rate",
        "dialer_agents",
        "dialer_agent_occupancy",
        "dialer_api_requests_total",
        "dialer_api_request_seconds_bucket",
    ):
        assert required in names, required
    assert any("histogram_quantile(0.99" in e and "by (le, provider, operation)" in e for e in EXPRS)
    assert any(
        "time() - max by (campaign) (dialer_oldest_due_timestamp_seconds" in e and "> 0" in e for e in EXPRS
    )


def test_callback_lag_panel_plots_provider_event_lag_and_handling_time() -> None:
    """The callback lag panel charts p50/p95 of event-to-receipt lag per account, and handling time apart."""
    (panel,) = [p for p in PANELS if p["title"].startswith("Callback lag")]
    exprs = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    for q in (50, 95):
        lag = exprs[f"p{q} lag {{{{provider}}}}"]
        assert lag.startswith(f"histogram_quantile({q / 100}, sum by (le, provider) ("), lag
        assert build.metric_names(lag) == {"dialer_callback_lag_seconds_bucket"}, lag
        handling = exprs[f"p{q} handling"]
        assert build.metric_names(handling) == {"dialer_callback_seconds_bucket"}, handling
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_committed_files_equal_a_fresh_generation() -> None:
    """The committed dashboard JSON (both copies) and PrometheusRule are what `python -m metrics.build` writes."""
    for relative, text in build.artefacts().items():
        path = build.ROOT / relative
        assert path.exists(), f"{relative} is missing: run python -m metrics.build"
        assert path.read_text() == text, f"{relative} is stale: run python -m metrics.build"
    json.loads((build.ROOT / build.DASHBOARD_PATHS[0]).read_text())


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool parses every target's PromQL (each checked as a recording rule)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("DIALER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (DIALER_REQUIRE_PROMTOOL is set)")
        pytest.skip("promtool not installed (apt-get install prometheus); .ci/offline-metrics runs this")
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text(build.promql_rules())
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPRS)} rules found" in result.stdout
