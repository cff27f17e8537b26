"""Alerts and dashboard: promtool accepts and unit-tests the rules, every metric
they and the dashboard query is one the forwarder exports, and every alert links
to a runbook that exists."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploytools import (
    HERE,
    OVERLAYS,
    REPO,
    alert_rules,
    dashboard,
    dashboard_queries,
    one,
    render,
    run,
    tool,
)

# What the forwarder exports (issue 2's metrics contract), by Prometheus type.
# Alerts and dashboards may use these and nothing else. test_live_scrape checks
# this list against the /metrics of a running forwarder.
EXPORTED_METRICS: dict[str, str] = {
    "forwarder_events_consumed_total": "counter",
    "forwarder_events_forwarded_total": "counter",
    "forwarder_events_duplicate_total": "counter",
    "forwarder_events_dead_lettered_total": "counter",
    "forwarder_sink_requests_total": "counter",
    "forwarder_sink_request_duration_seconds": "histogram",
    "forwarder_retries_total": "counter",
    "forwarder_rate_limit_delay_seconds": "histogram",
    "forwarder_in_flight_events": "gauge",
    "forwarder_consumer_lag": "gauge",
    "forwarder_event_delivery_latency_seconds": "histogram",
    "forwarder_ready": "gauge",
    "forwarder_build_info": "info",
    "forwarder_circuit_state": "gauge",
    "forwarder_credentials_valid": "gauge",
    "forwarder_users_parked": "gauge",
    "forwarder_topic_writable": "gauge",
    "forwarder_shared_state_up": "gauge",
    "forwarder_rate_limit_share": "gauge",
}
METRIC_LABELS: dict[str, set[str]] = {
    "forwarder_events_forwarded_total": {"action_type"},
    "forwarder_events_duplicate_total": {"scope"},
    "forwarder_events_dead_lettered_total": {"reason"},
    "forwarder_sink_requests_total": {"code"},
    "forwarder_consumer_lag": {"topic", "partition"},
    "forwarder_build_info": {"version"},
    "forwarder_topic_writable": {"role"},
}
# Labels Prometheus adds to every series scraped through the ServiceMonitor.
TARGET_LABELS = {"namespace", "pod", "service", "container", "endpoint", "job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\bforwarder_[a-z0-9_]+\b")
OPERATIONS = REPO / "docs" / "operations.md"
RUNBOOK_PREFIX = "https://github.com/legiti/forwarder/blob/main/docs/operations.md#"
RUNBOOKS = {
    "ForwarderConsumerLagGrowing": "runbook-forwarderconsumerlaggrowing",
    "ForwarderDeadLetters": "runbook-forwarderdeadletters",
    "ForwarderNotReady": "runbook-forwardernotready",
    "ForwarderCredentialsRejected": "runbook-forwardercredentialsrejected",
    "ForwarderSinkErrors": "runbook-forwardersinkerrors",
    "ForwarderCircuitOpen": "runbook-forwardersinkerrors",
    "ForwarderNoEvents": "runbook-forwardernoevents",
    "ForwarderUserParked": "runbook-forwarderuserparked",
    "ForwarderDeadLetterTopicNotWritable": "runbook-forwarderdeadlettertopicnotwritable",
}


def _rules_file(objects: list[dict[str, Any]], path: Path, annotations: bool = True) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file."""
    spec = one(objects, "PrometheusRule")["spec"]
    if not annotations:
        for group in spec["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _base_name(name: str) -> str:
    if name in EXPORTED_METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and EXPORTED_METRICS.get(base) == "histogram":
            return base
    return name


def _queries(objects: list[dict[str, Any]]) -> dict[str, str]:
    queries = {f"alert {r['alert']}: {r['expr']}": r["expr"] for r in alert_rules(objects)}
    for number, query in enumerate(dashboard_queries(dashboard(objects))):
        queries[f"dashboard query {number}: {query}"] = query
    return queries


# -------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    rules = _rules_file(objects, tmp_path / "rules.yaml")
    proc = run([tool("promtool"), "check", "rules", str(rules)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_fire_when_they_should(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """promtool unit tests (tests/deploy/alerts.promtool-test.yaml) on the rendered rules."""
    rules = _rules_file(objects, tmp_path / "rules.yaml", annotations=False)
    tests = yaml.safe_load((HERE / "alerts.promtool-test.yaml").read_text())
    tests["rule_files"] = [str(rules)]
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]}
    assert tested == {r["alert"] for r in alert_rules(objects)}, "every alert needs a unit test"
    test_file = tmp_path / "alerts.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = run([tool("promtool"), "test", "rules", str(test_file)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_expected_alerts_exist_with_runbooks(objects: list[dict[str, Any]]) -> None:
    rules = alert_rules(objects)
    assert {r["alert"] for r in rules} == set(RUNBOOKS)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert rule["annotations"]["runbook_url"] == RUNBOOK_PREFIX + RUNBOOKS[rule["alert"]]


def test_runbook_anchors_exist() -> None:
    """Every alert's runbook URL lands on an anchor in docs/operations.md."""
    text = OPERATIONS.read_text()
    for anchor in sorted(set(RUNBOOKS.values())):
        assert f'<a id="{anchor}"></a>' in text, f"docs/operations.md lacks the anchor {anchor}"


def test_the_dashboard_links_to_the_runbooks(objects: list[dict[str, Any]]) -> None:
    urls = [link["url"] for link in dashboard(objects).get("links", [])]
    assert urls, "the dashboard links to the runbooks"
    text = OPERATIONS.read_text()
    for url in urls:
        assert url.startswith(RUNBOOK_PREFIX), url
        assert f'<a id="{url.removeprefix(RUNBOOK_PREFIX)}"></a>' in text, url


# ------------------------------------------------------ metric consistency


def test_alerts_and_dashboard_use_only_exported_metrics(objects: list[dict[str, Any]]) -> None:
    queries = _queries(objects)
    used: set[str] = set()
    for where, query in queries.items():
        names = METRIC_NAME.findall(query)
        assert names, f"{where} queries no forwarder metric"
        for name in names:
            assert _base_name(name) in EXPORTED_METRICS, f"{where}: {name} is not exported"
            used.add(_base_name(name))
    # The dashboard and alerts together should cover what operators act on.
    assert {
        "forwarder_events_forwarded_total",
        "forwarder_event_delivery_latency_seconds",
        "forwarder_consumer_lag",
        "forwarder_retries_total",
        "forwarder_events_dead_lettered_total",
        "forwarder_sink_requests_total",
        "forwarder_rate_limit_delay_seconds",
        "forwarder_ready",
        "forwarder_credentials_valid",
        "forwarder_circuit_state",
    } <= used


def test_queries_use_only_labels_that_exist(objects: list[dict[str, Any]]) -> None:
    known = TARGET_LABELS | {"le"} | set().union(*METRIC_LABELS.values())
    for where, query in _queries(objects).items():
        # Drop strings and Grafana variables; then look at grouping and matchers.
        bare = re.sub(r'"[^"]*"', '""', query)
        grouped = re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", bare)
        matched = re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", bare)
        labels = {label.strip() for group in grouped for label in group.split(",") if label.strip()}
        labels |= set(matched)
        assert labels <= known, f"{where}: unknown labels {sorted(labels - known)}"
        for name in METRIC_NAME.findall(query):
            selector = re.search(re.escape(name) + r"\{([^}]*)\}", query)
            if selector:
                for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector.group(1)):
                    allowed = METRIC_LABELS.get(_base_name(name), set()) | TARGET_LABELS
                    assert label in allowed, f"{where}: {name} has no label {label}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_until_serving(proc: subprocess.Popen[str], url: str, deadline_s: float) -> None:
    """Poll until the health endpoint answers; the process exiting first is a failure."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if _get(url)[0] == 200:
                return
        except OSError:
            pass
        try:
            proc.wait(timeout=0.1)  # waits for the process, not a fixed sleep
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"forwarder exited with {proc.returncode} before serving {url}")
    pytest.fail(f"{url} did not answer within {deadline_s} s")


@pytest.mark.timeout(90)
def test_live_scrape_matches_the_exported_list(tmp_path: Path) -> None:
    """Scrape a running `forwarder run` (brokers unreachable, so it waits, alive but not
    ready) and compare its /metrics with EXPORTED_METRICS; then SIGTERM must exit 0."""
    from prometheus_client.parser import text_string_to_metric_families

    forwarder = Path(sys.executable).parent / "forwarder"
    assert forwarder.exists(), "the forwarder console script is not installed in this venv"
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "FORWARDER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_free_port()}",
        "FORWARDER_KAFKA_TOPICS": "auth-events",
        "FORWARDER_LEGITI_BASE_URL": "https://api.example.com",
        "FORWARDER_LEGITI_API_TOKEN": "tok-live-scrape",
        "FORWARDER_METRICS_PORT": str(port),
        "FORWARDER_SHUTDOWN_TIMEOUT_SECONDS": "5",
    }
    log = (tmp_path / "forwarder.log").open("w")
    proc = subprocess.Popen(
        [str(forwarder), "run"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_until_serving(proc, f"http://127.0.0.1:{port}/healthz", 30)
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        ready_status, _ = _get(f"http://127.0.0.1:{port}/readyz")
        assert ready_status == 503, "not in a consumer group yet, so not ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    exposed: dict[str, str] = {}
    for family in text_string_to_metric_families(body):
        if family.type == "counter":
            exposed[family.name + "_total"] = "counter"
        elif family.type == "info":
            exposed[family.name + "_info"] = "info"
        else:
            exposed[family.name] = family.type
    for name, kind in EXPORTED_METRICS.items():
        assert name in exposed, f"{name} is not exported by the running forwarder"
        assert exposed[name] == kind or (kind == "info" and exposed[name] == "gauge"), name
    assert "tok-live-scrape" not in body + (tmp_path / "forwarder.log").read_text()


def test_every_overlay_keeps_the_same_alerts() -> None:
    """Overlays tune thresholds but must not drop alerts."""
    names = {
        name: sorted(r["alert"] for r in alert_rules(render(path)))
        for name, path in OVERLAYS.items()
    }
    assert len({tuple(v) for v in names.values()}) == 1, names
