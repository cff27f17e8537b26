"""The `forwarder` command: run, check-config, dlq, status, demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from pydantic.fields import FieldInfo

from forwarder import __version__
from forwarder.commands import dlq, status
from forwarder.config import (
    ConfigError,
    KafkaSettings,
    KafkaToolSettings,
    OpsSettings,
    Settings,
    flag_name,
    load,
    load_settings,
    masked,
    public_fields,
)
from forwarder.kafka.options import KafkaSecretError
from forwarder.ops.logs import configure
from forwarder.runtime import run_event_loop, tune_garbage_collector

EXIT_CONFIG = 2


def _kafka_tool_fields() -> dict[str, FieldInfo]:
    """The settings of the commands that only talk to Kafka (dlq, status)."""
    return {
        field.alias: field
        for section in (KafkaSettings, OpsSettings)
        for field in section.model_fields.values()
        if field.alias is not None
    }


def _add_setting_flags(
    parser: argparse.ArgumentParser, fields: Mapping[str, FieldInfo] | None = None
) -> None:
    """One flag per setting, generated so the CLI can never fall behind the settings."""
    group = parser.add_argument_group("settings (override FORWARDER_* variables and the file)")
    for name, field in (public_fields() if fields is None else fields).items():
        group.add_argument(
            flag_name(name), dest=f"setting_{name}", metavar="VALUE", help=field.description
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwarder",
        description="Forward login/logout events from Kafka to Legiti: its track_auth API"
        " or its MCP tools.",
    )
    parser.add_argument("--version", action="version", version=f"forwarder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the forwarder until SIGTERM/SIGINT"),
        ("check-config", "print the effective configuration (secrets masked) and validate it"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path, help="TOML file (or FORWARDER_CONFIG_FILE)")
        _add_setting_flags(command)
    for command in (*dlq.add_parsers(commands), status.add_parser(commands)):
        command.add_argument("--config", type=Path, help="TOML file (or FORWARDER_CONFIG_FILE)")
        _add_setting_flags(command, _kafka_tool_fields())
    demo = commands.add_parser(
        "demo", help="run the real pipeline against a local broker and a local Legiti stand-in"
    )
    demo.add_argument("--events", type=int, default=3000, help="synthetic events to produce")
    demo.add_argument(
        "--sink",
        choices=("legiti", "mcp"),
        default="legiti",
        help="legiti: the REST API; mcp: Legiti's MCP tools through a local gateway",
    )
    demo.add_argument("--metrics-port", type=int, default=9102, help="0 picks a free port")
    demo.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="more than 1: that many forwarder processes sharing one limit through a local Redis",
    )
    return parser


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(os.environ, _flag_values(args), args.config)


def _kafka_tool(args: argparse.Namespace) -> int:
    """`dlq` and `status`: Kafka settings only (no Legiti URL or token needed)."""
    try:
        settings = load(KafkaToolSettings, os.environ, _flag_values(args), args.config)
    except ConfigError as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.ops.log_level, settings.ops.log_format)
    command = dlq.run if args.command == "dlq" else status.run
    try:
        return run_event_loop(command(settings, args))
    except KafkaSecretError as exc:
        print(f"forwarder: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode() + "\n")
    from forwarder.commands.run import StartupError, load_policy_file

    try:
        load_policy_file(settings.limits)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.ops.log_level, settings.ops.log_format)
    from forwarder.commands.run import StartupError, run_forever

    tune_garbage_collector()
    try:
        run_event_loop(run_forever(settings))
    except StartupError as exc:
        print(f"forwarder: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "run":
        return _run(args)
    if args.command in ("dlq", "status"):
        return _kafka_tool(args)
    if args.replicas > 1:
        from forwarder.commands.fleet_demo import run_fleet_demo

        return run_fleet_demo(args.events, args.replicas)
    from forwarder.commands.demo import run_demo

    return run_demo(args.events, args.metrics_port, args.sink)
