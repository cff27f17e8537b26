"""The benchmark's results as a table for people and the targets they are judged by."""

from __future__ import annotations

from typing import Any

TARGET_VS_AIOHTTP = 0.6
FLOOR_VS_AIOHTTP = 0.4
TARGET_VS_NAIVE = 10.0
TARGET_P99_MS = 50.0
TARGET_BACKLOG_RSS_MB = 150.0
TARGET_FLEET_VS_FORWARDER = 0.7
TARGET_MCP_VS_AIOHTTP = 0.5


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 4 with the measured value and whether it is met."""
    ratios = results["ratios"]
    checks: dict[str, Any] = {
        "forwarder_vs_aiohttp": {
            "value": ratios["forwarder_vs_aiohttp"],
            "target": TARGET_VS_AIOHTTP,
            "floor": FLOOR_VS_AIOHTTP,
            "met": ratios["forwarder_vs_aiohttp"] >= TARGET_VS_AIOHTTP,
            "above_floor": ratios["forwarder_vs_aiohttp"] >= FLOOR_VS_AIOHTTP,
        },
        "forwarder_vs_naive": {
            "value": ratios["forwarder_vs_naive"],
            "target": TARGET_VS_NAIVE,
            "met": ratios["forwarder_vs_naive"] >= TARGET_VS_NAIVE,
        },
        "fleet_vs_forwarder": {
            "value": ratios["fleet_vs_forwarder"],
            "target": TARGET_FLEET_VS_FORWARDER,
            "met": ratios["fleet_vs_forwarder"] >= TARGET_FLEET_VS_FORWARDER,
        },
        "mcp_vs_mcp_aiohttp": {
            "value": ratios["mcp_vs_mcp_aiohttp"],
            "target": TARGET_MCP_VS_AIOHTTP,
            "met": ratios["mcp_vs_mcp_aiohttp"] >= TARGET_MCP_VS_AIOHTTP,
        },
        "p99_latency_ms": {
            "value": results["latency"]["p99_ms"],
            "target": TARGET_P99_MS,
            "met": results["latency"]["p99_ms"] <= TARGET_P99_MS,
        },
    }
    backlog = results.get("backlog")
    if backlog is not None:
        peak = max(run["peak_rss_mb"] for run in backlog.values())
        checks["backlog_peak_rss_mb"] = {
            "value": peak,
            "target": TARGET_BACKLOG_RSS_MB,
            "met": peak <= TARGET_BACKLOG_RSS_MB,
        }
    return checks


def _median_of(section: dict[str, Any], key: str) -> float:
    values = sorted(run[key] for run in section["runs"])
    return float(values[len(values) // 2])


def _sent(section: dict[str, Any]) -> str:
    return f"{_median_of(section, 'deliveries'):,.0f}"


def _row(name: str, value: str, note: str = "") -> str:
    return f"  {name:<44} {value:>14}  {note}".rstrip()


def table(results: dict[str, Any]) -> str:
    machine, workload = results["machine"], results["workload"]
    fwd = results["forwarder"]
    latency, relay = results["latency"], results["relay_latency"]
    ratios = results["ratios"]
    lines = [
        f"forwarder benchmark: {workload['events']:,} records ({workload['deliveries']:,} to "
        f"deliver, {workload['duplicates']:,} duplicates), {workload['users']:,} users, "
        f"{workload['partitions']} partitions; medians of {workload['runs']} runs",
        f"machine: {machine['cpu_count']} CPUs, Python {machine['python']}, {machine['platform']};"
        f" load average {machine['load_average_1m']:.1f} before, "
        f"{machine['load_average_1m_after']:.1f} after; CPU taken by the host during the run "
        f"{machine['cpu_stolen_seconds']:.1f} s",
        "",
        _row("", "events/s", "forwarder ÷ it"),
        _row(
            f"forwarder (max in flight {workload['max_in_flight']})",
            f"{fwd['events_per_second']:,.0f}",
        ),
        _row(
            "fleet: the same with FORWARDER_REDIS_URL",
            f"{results['fleet']['events_per_second']:,.0f}",
            f"fleet ÷ forwarder {ratios['fleet_vs_forwarder']:.2f}",
        ),
        _row(
            "raw HTTP ceiling (aiohttp, same concurrency)",
            f"{results['aiohttp_ceiling']['events_per_second']:,.0f}",
            f"{ratios['forwarder_vs_aiohttp']:.2f} "
            f"(median of pairs {ratios['forwarder_vs_aiohttp_pairs']:.2f})",
        ),
        _row(
            "raw consume ceiling (aiokafka + orjson)",
            f"{results['consume_ceiling']['events_per_second']:,.0f}",
            f"{ratios['forwarder_vs_consume']:.2f}",
        ),
        _row(
            f"naive: decode, httpx.post, commit ({_sent(results['naive'])} events)",
            f"{results['naive']['events_per_second']:,.0f}",
            f"{ratios['forwarder_vs_naive']:.1f}",
        ),
        _row(
            f"naive, one kept-alive httpx.Client ({_sent(results['naive_keepalive'])} events)",
            f"{results['naive_keepalive']['events_per_second']:,.0f}",
            f"{ratios['forwarder_vs_naive_keepalive']:.1f}",
        ),
        "",
        _row(
            f"MCP sink, SDK server in JSON ({results['mcp']['events']:,} records)",
            f"{results['mcp']['forwarder']['events_per_second']:,.0f}",
            f"{ratios['mcp_vs_rest']:.2f} of the REST sink's rate",
        ),
        _row(
            "raw MCP ceiling (aiohttp, one session)",
            f"{results['mcp']['aiohttp_ceiling']['events_per_second']:,.0f}",
            f"{ratios['mcp_vs_mcp_aiohttp']:.2f} "
            f"(median of pairs {results['mcp']['forwarder_vs_aiohttp_pairs']:.2f})",
        ),
        _row(
            "MCP sink CPU per 1,000 records",
            f"{results['mcp']['forwarder']['cpu_seconds_per_1000_events']:.3f} s",
            f"raw MCP ceiling: "
            f"{results['mcp']['aiohttp_ceiling']['cpu_seconds_per_1000_events']:.3f} s",
        ),
        "",
        _row(
            f"delivery latency at {latency['rate']:,.0f} records/s",
            f"p50 {latency['p50_ms']:.1f} ms",
            f"p99 {latency['p99_ms']:.1f} ms (max {latency['max_ms']:.0f} ms)",
        ),
        _row(
            "  reference: aiokafka + aiohttp relay",
            f"p50 {relay['p50_ms']:.1f} ms",
            f"p99 {relay['p99_ms']:.1f} ms (max {relay['max_ms']:.0f} ms)",
        ),
        _row(
            "  broker fetch wait; forwarder waiting for a CPU",
            f"{workload['fetch_max_wait_ms']} ms",
            f"{_median_of(latency, 'runqueue_wait_share'):.0%} of the time",
        ),
        _row("forwarder peak RSS", f"{fwd['peak_rss_mb']:.1f} MB"),
        _row("forwarder CPU per 1,000 records", f"{fwd['cpu_seconds_per_1000_events']:.3f} s"),
        _row(
            "raw HTTP ceiling CPU per 1,000 requests",
            f"{results['aiohttp_ceiling']['cpu_seconds_per_1000_events']:.3f} s",
        ),
        _row(
            "preload (producer)",
            f"{workload['preload_events_per_second']:,.0f}/s",
            f"{workload['events']:,} records in {workload['preload_seconds']:.1f} s",
        ),
    ]
    backlog = results.get("backlog")
    if backlog is not None:
        lines.append("")
        for run in sorted(backlog.values(), key=lambda r: r["events"]):
            lines.append(
                _row(
                    f"backlog {run['events']:,} at {run['rate_limit']}, {run['seconds']:.0f} s",
                    f"{run['peak_rss_mb']:.1f} MB",
                    f"peak RSS; {run['deliveries']:,} sent ({run['deliveries_per_second']:.0f}/s);"
                    f" preloaded in {run['produce_seconds']:.1f} s",
                )
            )
    lines.append("")
    for name, check in results["targets"].items():
        verdict = "met" if check["met"] else "NOT met"
        if not check["met"] and check.get("above_floor"):
            verdict += f" (above the floor {check['floor']})"
        lines.append(_row(name, f"{check['value']:.2f}", f"target {check['target']}: {verdict}"))
    return "\n".join(lines)
