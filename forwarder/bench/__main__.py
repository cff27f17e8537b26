"""`python -m forwarder.bench`: run the benchmark, print the table, write the JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from forwarder.bench.processes import BenchError
from forwarder.bench.report import table, targets
from forwarder.bench.runner import BenchOptions, run_benchmark
from forwarder.runtime import run_event_loop
from forwarder.sandbox.process import ChildFailed


def parse_options(argv: Sequence[str] | None = None) -> tuple[BenchOptions, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m forwarder.bench",
        description="Measure the forwarder next to the raw HTTP and Kafka ceilings and a naive "
        "forwarder, on a local Tansu broker and a local Legiti stand-in.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="records to preload")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--naive-events", type=int, default=2_000)
    parser.add_argument(
        "--naive-seconds", type=float, default=20.0, help="time box for each naive run"
    )
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--latency-rate", type=float, help="records/s for the latency runs (default: half the rate)"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results/latest.json"))
    parser.add_argument("--backlog", action="store_true", help="also run the backlog scenario")
    parser.add_argument("--backlog-events", type=int, default=1_000_000)
    parser.add_argument(
        "--backlog-compare-events",
        type=int,
        default=100_000,
        help="a second, smaller backlog, to show RSS does not grow with the backlog",
    )
    parser.add_argument("--backlog-rate", default="200/second")
    parser.add_argument("--backlog-seconds", type=float, default=30.0)
    parser.add_argument(
        "--mcp-events", type=int, default=5_000, help="records for the MCP sink's runs"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.runs, args.naive_events, args.naive_seconds = 300, 1, 50, 5.0
        args.latency_seconds, args.latency_rate = 1.0, 200.0
        args.backlog_events, args.backlog_compare_events = 3_000, 1_000
        args.backlog_seconds = 4.0  # past the limit's start-up wait (window + timeout)
        args.mcp_events = 200
    options = BenchOptions(
        events=args.events,
        runs=args.runs,
        naive_events=args.naive_events,
        naive_seconds=args.naive_seconds,
        latency_seconds=args.latency_seconds,
        latency_rate=args.latency_rate,
        backlog=args.backlog,
        backlog_events=args.backlog_events,
        backlog_compare_events=args.backlog_compare_events,
        backlog_rate=args.backlog_rate,
        backlog_seconds=args.backlog_seconds,
        log_dir=args.json.parent / "logs",
        mcp_events=args.mcp_events,
    )
    return options, args.json


def main(argv: Sequence[str] | None = None) -> int:
    options, json_path = parse_options(argv)
    try:
        results = run_event_loop(run_benchmark(options))
    except (BenchError, ChildFailed) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    results["targets"] = targets(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(results))
    print(f"\nwritten to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
