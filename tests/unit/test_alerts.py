"""The alert rules: promtool checks and unit tests, a runbook per alert, and the generated PrometheusRule."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

import metrics
from metrics import build

ALERTS_TEXT = build.ALERTS.read_text()
RULES = build.alert_rules(ALERTS_TEXT)
ALERTS = {r["alert"]: r for r in RULES if "alert" in r}
TESTS_TEXT = (build.ROOT / "metrics" / "alerts_test.yaml").read_text()
RUNBOOK = "https://github.com/pgdialer/pgdialer/blob/main/README.md#"
REQUIRED = {
    "DialerStalled",
    "DialerOldestDueTooOld",
    "DialerProviderErrorRatioHigh",
    "DialerCircuitOpen",
    "DialerCallbacksMissing",
    "DialerWebhookBacklog",
    "DialerWorkerDown",
    "DialerAbandonRateHigh",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("DIALER_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (DIALER_REQUIRE_PROMTOOL is set)")
        pytest.skip("promtool not installed (apt-get install prometheus); .ci/offline-metrics runs this")
    return found


def test_required_alerts_exist() -> None:
    """Every alert the operations issue asks for is defined."""
    assert ALERTS.keys() >= REQUIRED


def test_every_alert_has_severity_for_and_annotations() -> None:
    """Each alert carries a severity, summary, description and a runbook_url to its README anchor."""
    for name, rule in ALERTS.items():
        assert rule.get("severity") in {"critical", "warning"}, name
        assert rule.get("summary") and rule.get("description"), name
        assert rule.get("runbook_url") == RUNBOOK + name.lower(), name
        if rule.get("for") is not None:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name


def test_every_runbook_anchor_is_a_heading_in_the_metrics_readme() -> None:
    """metrics/README.md has a heading per alert whose GitHub anchor is the runbook_url's fragment."""
    readme = (build.ROOT / "metrics" / "README.md").read_text()
    anchors = {m.lower() for m in re.findall(r"^#+ +(\w+)\s*$", readme, flags=re.MULTILINE)}
    for name in ALERTS:
        assert name.lower() in anchors, f"no runbook heading for {name}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """alerts_test.yaml has, for every alert, a case where it fires and one where it must not."""
    firing: set[str] = set()
    silent: set[str] = set()
    for m in re.finditer(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", TESTS_TEXT):
        (silent if m[2] else firing).add(m[1])
    assert ALERTS.keys() <= firing, ALERTS.keys() - firing
    assert ALERTS.keys() <= silent, ALERTS.keys() - silent


def test_rules_read_only_metrics_the_service_defines() -> None:
    """Every metric an alert expression reads is defined in metrics/ (or is Prometheus' own `up`)."""
    exported = build.exposed_names(generate_latest(metrics.REGISTRY).decode())
    for rule in RULES:
        unknown = build.metric_names(rule["expr"]) - exported - build.GENERATED_SERIES
        assert not unknown, (rule.get("alert"), unknown)


def test_metric_name_reader_ignores_functions_labels_and_strings() -> None:
    """PromQL name extraction keeps metric names only: no functions, label names, keywords, strings or durations."""
    expr = (
        'histogram_quantile(0.99, sum by (le, provider) (rate(x_bucket{operation="start_call"}[5m]))) > 2 '
        'and on (provider) y_total offset 15m unless label_replace(z, "dst", "v", "src", "(.*)") '
        "or absent(up{job=~'.*dialer.*'} == 1) or vector(1e3) + w[30m:1m] * $campaign_var"
    )
    assert build.metric_names(expr) == {"x_bucket", "y_total", "z", "up", "w"}


def test_prometheus_rule_wraps_alerts_yaml() -> None:
    """The generated PrometheusRule is named dialer, selectable by kube-prometheus-stack, and holds alerts.yaml's groups verbatim."""
    text = build.prometheus_rule(ALERTS_TEXT)
    assert "kind: PrometheusRule\n" in text and "\n  name: dialer\n" in text
    assert "\n    release: kube-prometheus-stack\n" in text
    spec = text.split("\nspec:\n", 1)[1]
    unwrapped = "\n".join(line.removeprefix("  ") for line in spec.splitlines())
    assert unwrapped.strip() == ALERTS_TEXT.removeprefix("---\n").strip()
    assert [r["alert"] for r in build.alert_rules(spec) if "alert" in r] == list(ALERTS)


def test_promtool_checks_the_rules() -> None:
    """promtool accepts alerts.yaml and finds as many rules as the reader above."""
    result = subprocess.run([promtool(), "check", "rules", str(build.ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in alerts_test.yaml passes (each alert firing and not firing)."""
    path = build.ROOT / "metrics" / "alerts_test.yaml"
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
