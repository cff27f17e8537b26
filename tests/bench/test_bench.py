"""The benchmark keeps working: a tiny run end to end, judged on its output, not its timings.

Timings belong to the benchmark itself (`python -m forwarder.bench`); on a shared CI
machine they say nothing. What can rot silently is the machinery: a worker that no
longer starts, a metric renamed under it, a count that no longer adds up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

QUICK_EVENTS = 300

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    completed = subprocess.run(
        [sys.executable, "-m", "forwarder.bench", "--quick", "--backlog", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert "forwarder (max in flight 64)" in completed.stdout
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def _positive(section: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert section[key] > 0, key


def test_machine_and_workload_are_described(results: dict[str, Any]) -> None:
    machine, workload = results["machine"], results["workload"]
    assert machine["cpu_count"] >= 1
    assert machine["python"].startswith("3.")
    assert machine["cpu_stolen_seconds"] >= 0
    assert workload["events"] == QUICK_EVENTS
    assert 0 < workload["duplicates"] < QUICK_EVENTS // 10
    assert workload["deliveries"] == workload["events"] - workload["duplicates"]
    assert workload["users"] == 5_000
    assert workload["max_in_flight"] == 64


def test_forwarder_delivers_every_event_exactly_once(results: dict[str, Any]) -> None:
    workload, forwarder = results["workload"], results["forwarder"]
    _positive(forwarder, "events_per_second", "peak_rss_mb", "cpu_seconds_per_1000_events")
    [run] = forwarder["runs"]
    assert run["consumed"] == workload["events"]
    assert run["deliveries"] == workload["deliveries"]
    assert run["requests"] == workload["deliveries"], "a duplicate was sent"
    assert run["duplicates"] == workload["duplicates"]


def test_the_fleet_row_delivers_every_event_exactly_once_through_redis(
    results: dict[str, Any],
) -> None:
    workload, fleet = results["workload"], results["fleet"]
    _positive(fleet, "events_per_second", "peak_rss_mb", "cpu_seconds_per_1000_events")
    [run] = fleet["runs"]
    assert run["consumed"] == workload["events"]
    assert run["deliveries"] == workload["deliveries"]
    assert run["requests"] == workload["deliveries"], "a duplicate was sent"
    assert run["duplicates"] == workload["duplicates"]
    assert results["ratios"]["fleet_vs_forwarder"] > 0
    assert "fleet_vs_forwarder" in results["targets"]


@pytest.mark.parametrize("name", ["latency", "relay_latency"])
def test_latency_is_measured_on_every_delivery(results: dict[str, Any], name: str) -> None:
    latency = results[name]
    _positive(latency, "rate", "p50_ms", "p99_ms", "max_ms")
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    [run] = latency["runs"]
    assert run["deliveries"] > 0
    assert 0 <= run["runqueue_wait_share"] <= 1


def test_the_relay_delivers_the_same_requests_as_the_forwarder(results: dict[str, Any]) -> None:
    """The reference is only a reference if it carries the same events."""
    logs = Path(results["options"]["log_dir"])
    keys = {
        reader: {key for key, _ in json.loads((logs / f"{reader}-latency-0.json").read_text())}
        for reader in ("forwarder", "relay")
    }
    assert keys["forwarder"] == keys["relay"]
    assert len(keys["relay"]) == results["relay_latency"]["runs"][0]["deliveries"]


def test_limits_and_baselines_are_measured(results: dict[str, Any]) -> None:
    workload = results["workload"]
    _positive(results["aiohttp_ceiling"], "events_per_second", "cpu_seconds_per_1000_events")
    assert results["aiohttp_ceiling"]["runs"][0]["deliveries"] == workload["deliveries"]
    _positive(results["consume_ceiling"], "events_per_second")
    assert results["consume_ceiling"]["runs"][0]["records"] == workload["events"]
    for name in ("naive", "naive_keepalive"):
        _positive(results[name], "events_per_second")
        assert 2 <= results[name]["runs"][0]["deliveries"] <= workload["naive_events"]
    for name in (
        "forwarder_vs_aiohttp",
        "forwarder_vs_aiohttp_pairs",
        "forwarder_vs_naive",
        "forwarder_vs_consume",
    ):
        assert results["ratios"][name] > 0


def test_the_mcp_sink_delivers_every_event_once_next_to_its_ceiling(
    results: dict[str, Any],
) -> None:
    mcp = results["mcp"]
    assert mcp["events"] == 200
    assert 0 < mcp["deliveries"] <= mcp["events"]
    _positive(mcp["forwarder"], "events_per_second", "cpu_seconds_per_1000_events")
    _positive(mcp["aiohttp_ceiling"], "events_per_second", "cpu_seconds_per_1000_events")
    [run] = mcp["forwarder"]["runs"]
    assert run["consumed"] == mcp["events"]
    assert run["deliveries"] == run["requests"] == mcp["deliveries"], "a duplicate was sent"
    assert run["duplicates"] == mcp["events"] - mcp["deliveries"]
    assert mcp["aiohttp_ceiling"]["runs"][0]["deliveries"] == mcp["deliveries"]
    assert results["ratios"]["mcp_vs_mcp_aiohttp"] > 0
    assert results["ratios"]["mcp_vs_rest"] > 0


def test_backlog_runs_stay_paused_and_report_memory(results: dict[str, Any]) -> None:
    backlog = results["backlog"]
    assert backlog["large"]["events"] > backlog["small"]["events"]
    for run in backlog.values():
        _positive(run, "peak_rss_mb", "produce_events_per_second", "deliveries")
        assert run["rss_mb_samples"]
        assert run["deliveries"] < run["events"], "the rate limit should hold the backlog back"
        assert run["buffered_events_at_end"] <= 10_000, "FORWARDER_MAX_BUFFERED_EVENTS"


def test_targets_are_judged(results: dict[str, Any]) -> None:
    targets = results["targets"]
    assert set(targets) == {
        "forwarder_vs_aiohttp",
        "forwarder_vs_naive",
        "p99_latency_ms",
        "backlog_peak_rss_mb",
        "fleet_vs_forwarder",
        "mcp_vs_mcp_aiohttp",
    }
    for check in targets.values():
        assert isinstance(check["met"], bool)


def test_results_are_plain_json(results: dict[str, Any]) -> None:
    """Everything in the file can be read back by any JSON tool (no NaN, no objects)."""
    text = json.dumps(results, allow_nan=False)
    assert json.loads(text) == results
