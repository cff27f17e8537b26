"""`forwarder demo`: the real pipeline, end to end, on one machine with nothing to set up.

A local Kafka-compatible broker and a local Legiti stand-in are started, a few
thousand synthetic events are published (with duplicates, malformed records and
a user Legiti rejects, so every path shows up), and the same `Forwarder` that
`forwarder run` uses moves them across while a progress line shows the counters.

With `--sink mcp` the events go the MCP way instead: through a local gateway (grant
token, a default-deny policy that limits logouts to a number per second, so some
calls are refused and retried after the window) to a local MCP server built with
the official SDK, which calls the same Legiti stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson

from forwarder.commands.run import Forwarder
from forwarder.config import load_settings
from forwarder.core.dead_letters import REASONS
from forwarder.core.events import ActionType
from forwarder.ops.logs import configure
from forwarder.runtime import run_event_loop
from forwarder.sandbox.broker import BrokerUnavailable, SandboxBroker, free_port
from forwarder.sandbox.gateway import Gateway, GatewayPolicy
from forwarder.sandbox.legiti import Faults, LegitiStub
from forwarder.sandbox.mcp_server import McpServerStub
from forwarder.sandbox.samples import Samples
from forwarder.sandbox.settings import sandbox_env
from forwarder.sandbox.topics import Outgoing, create_topic, produce

TOPIC = "auth-events"
PARTITIONS = 4
USERS = 200
REJECTED_USER = "user-rejected-by-legiti"
DEMO_GRANT = "demo-grant"
LOGOUTS_PER_SECOND = 50
DEMO_POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        "track_login": {},
        "track_logout": {
            "limits": [
                {
                    "counter": "logouts",
                    "window": "second",
                    "max": LOGOUTS_PER_SECOND,
                    "scope": "grant",
                }
            ]
        },
    },
}
TIME_LIMIT = 50.0
MCP_TIME_LIMIT = 150.0
"""The MCP way runs the gateway and the server in this process too, and is throttled."""

Message = tuple[bytes | None, list[tuple[str, bytes]]]


@dataclass
class Plan:
    messages: list[Message]
    duplicates: int
    malformed: int


def synthetic_events(count: int, seed: int = 7) -> Plan:
    """Native and CloudEvents records with ~5% re-published copies and a few bad ones."""
    rng = random.Random(seed)
    messages: list[Message] = []
    duplicates = 0
    for index in range(count):
        if messages and rng.random() < 0.05:
            messages.append(rng.choice(messages[-50:]))
            duplicates += 1
            continue
        user = REJECTED_USER if index % 500 == 250 else f"user-{rng.randrange(USERS)}"
        action = rng.choice(list(ActionType))
        messages.append(_event(rng, index, user, action))
    malformed: list[Message] = [
        (b"{not json", []),
        (b"", []),
        (None, []),
        (orjson.dumps({"event_id": "x-1", "type": "login", "success": True}), []),
        (orjson.dumps({"event_id": "x-2", "type": "password_reset", "user_id": "u"}), []),
        (b"\xff\xfe\x00", []),
    ]
    for message in malformed:
        messages.insert(rng.randrange(len(messages) + 1), message)
    return Plan(messages, duplicates, len(malformed))


def _event(rng: random.Random, index: int, user: str, action: ActionType) -> Message:
    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
    shape = index % 3
    ce_type = {
        ActionType.LOGIN_SUCCESS: "com.example.auth.login.succeeded",
        ActionType.LOGIN_FAILURE: "com.example.auth.login.failed",
        ActionType.LOGOUT: "com.example.auth.logout",
    }[action]
    if shape == 0:
        native: dict[str, object] = {
            "event_id": event_id,
            "type": "logout" if action is ActionType.LOGOUT else "login",
            "user_id": user,
            "occurred_at": "2026-11-20T12:00:00Z",
            "ip": f"203.0.113.{index % 250}",
        }
        if action is not ActionType.LOGOUT:
            native["success"] = action is ActionType.LOGIN_SUCCESS
        return orjson.dumps(native), []
    if shape == 1:
        document = {
            "specversion": "1.0",
            "id": event_id,
            "source": "/auth/demo",
            "type": ce_type,
            "datacontenttype": "application/json",
            "data": {"user_id": user},
        }
        return orjson.dumps(document), [("content-type", b"application/cloudevents+json")]
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"/auth/demo"),
        ("ce_type", ce_type.encode()),
        ("content-type", b"application/json"),
    ]
    return orjson.dumps({"user_id": user}), headers


async def _publish(bootstrap: str, plan: Plan) -> None:
    await create_topic(bootstrap, TOPIC, PARTITIONS)
    records = (
        Outgoing(value, _user_key(value, headers), headers) for value, headers in plan.messages
    )
    await produce(bootstrap, TOPIC, records, linger_ms=10)


def _user_key(value: bytes | None, headers: list[tuple[str, bytes]]) -> bytes | None:
    """Upstream services key by user so one user's events share a partition (and order)."""
    if value is None:
        return b"tombstone"  # Kafka needs a key or a value; this record has no value
    try:
        document = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    user = document.get("user_id") or (document.get("data") or {}).get("user_id")
    return str(user).encode() if user is not None else None


def _snapshot(samples: Samples) -> dict[str, int]:
    return {
        "consumed": int(samples.total("forwarder_events_consumed_total")),
        "forwarded": int(samples.total("forwarder_events_forwarded_total")),
        "duplicates": int(samples.total("forwarder_events_duplicate_total")),
        "dead_lettered": int(samples.total("forwarder_events_dead_lettered_total")),
        "retries": int(samples.total("forwarder_retries_total")),
    }


@dataclass
class Sandbox:
    """The far end the demo's events go to: the settings that point the forwarder at it
    (public names in lower case, as `sandbox_env` takes them), and the summary lines it
    adds."""

    legiti: LegitiStub
    settings: dict[str, str]
    summary: Callable[[], list[str]]


@contextlib.asynccontextmanager
async def _far_end(sink: str) -> AsyncIterator[Sandbox]:
    faults = Faults(error_rate=0.01, reject_user_ids={REJECTED_USER}, seed=3)
    async with LegitiStub(faults=faults) as legiti:
        if sink == "legiti":
            yield Sandbox(legiti, {}, list)
            return
        async with (
            McpServerStub(legiti.url) as server,
            Gateway(
                server.url, GatewayPolicy.parse(DEMO_POLICY), frozenset({DEMO_GRANT})
            ) as gateway,
        ):

            def summary() -> list[str]:
                lines = [
                    f"  mcp calls {tool:<14}{server.calls[tool]}" for tool in sorted(server.calls)
                ]
                for tool in sorted(gateway.denials):
                    lines.append(
                        f"  denied {tool:<17}{gateway.denials[tool]}"
                        f" ({gateway.rate_limited[tool]} over {LOGOUTS_PER_SECOND}/second,"
                        " retried after the window)"
                    )
                lines.append(f"  mcp sessions        {gateway.sessions_started}")
                lines.append(
                    f"  mcp calls at once   {server.most_in_flight} at most, over one session"
                )
                return lines

            settings = {"sink": "mcp", "mcp_url": gateway.url, "mcp_token": DEMO_GRANT}
            yield Sandbox(legiti, settings, summary)


async def _demo(events: int, metrics_port: int, sink: str) -> int:
    plan = synthetic_events(events)
    total = len(plan.messages)
    far_end = (
        "a local Legiti API"
        if sink == "legiti"
        else "a local MCP gateway, MCP server and Legiti API"
    )
    print(f"starting a local Kafka-compatible broker and {far_end} (total {total} records)")
    with SandboxBroker() as broker:
        async with _far_end(sink) as sandbox:
            legiti = sandbox.legiti
            await _publish(broker.bootstrap, plan)
            print(
                f"published {total} records to {TOPIC!r} ({PARTITIONS} partitions): "
                f"{plan.duplicates} re-published copies, {plan.malformed} malformed"
            )
            env = sandbox_env(
                broker.bootstrap,
                TOPIC,
                legiti.url,
                kafka_group_id="forwarder-demo",
                metrics_port=metrics_port,
                log_level="ERROR",
                **sandbox.settings,
            )
            forwarder = Forwarder(load_settings(env))
            stop = asyncio.Event()
            task = asyncio.create_task(forwarder.run(stop))
            started = time.monotonic()
            limit = TIME_LIMIT if sink == "legiti" else MCP_TIME_LIMIT
            busy = await _progress(forwarder, total, started, task, limit)
            stop.set()
            await task
            return _summary(forwarder, legiti, busy, total, sandbox.summary())


async def _progress(
    forwarder: Forwarder, total: int, started: float, task: asyncio.Task[None], limit: float
) -> float:
    """Show the counters until every record is finished; return seconds spent working
    (from the first record consumed, so the group join is not counted)."""
    interactive = sys.stdout.isatty()
    last_print = 0.0
    first_consumed: float | None = None
    while True:
        snap = _snapshot(Samples.of_registry(forwarder.metrics.registry))
        if first_consumed is None and snap["consumed"]:
            first_consumed = time.monotonic()
        done = snap["forwarded"] + snap["duplicates"] + snap["dead_lettered"]
        now = time.monotonic()
        if interactive or now - last_print >= 1.0 or done >= total:
            line = (
                f"consumed {snap['consumed']:>6}/{total}  forwarded {snap['forwarded']:>6}  "
                f"duplicates {snap['duplicates']:>4}  dead-lettered {snap['dead_lettered']:>3}  "
                f"retries {snap['retries']:>4}  {now - started:5.1f}s"
            )
            print(
                ("\r" + line) if interactive else line, end="" if interactive else "\n", flush=True
            )
            last_print = now
        if done >= total:
            if interactive:
                print()
            return now - (first_consumed or started)
        if task.done():
            task.result()
            raise RuntimeError("the forwarder stopped before the demo finished")
        if now - started > limit:
            raise TimeoutError(f"the demo did not finish within {limit:.0f}s")
        await asyncio.sleep(0.1)


def _summary(
    forwarder: Forwarder, legiti: LegitiStub, elapsed: float, total: int, sink_lines: list[str]
) -> int:
    samples = Samples.of_registry(forwarder.metrics.registry)
    snap = _snapshot(samples)
    print("\nsummary")
    print(f"  consumed            {snap['consumed']}")
    for action in ActionType:
        value = int(samples.value("forwarder_events_forwarded_total", action_type=action.value))
        print(f"  forwarded {action.value:<14}{value}")
    print(f"  duplicates          {snap['duplicates']} (not sent again)")
    for reason in REASONS:
        value = int(samples.value("forwarder_events_dead_lettered_total", reason=reason))
        if value:
            print(f"  dead-lettered {reason:<18}{value}")
    retried = "injected 503s" if not sink_lines else "injected 503s and rate-limit denials"
    print(f"  retries             {snap['retries']} ({retried}, all recovered)")
    for line in sink_lines:
        print(line)
    print(f"  legiti accepted     {len(legiti.accepted)} requests")
    rate = total / elapsed
    print(
        f"  throughput          {rate:,.0f} records/s ({elapsed:.1f}s, first consumed to last done)"
    )
    print(f"  metrics were served at http://127.0.0.1:{forwarder.health.port}/metrics")
    print(f"  dead letters are in topic {forwarder.settings.kafka.dead_letter_topic!r}")
    ok = snap["consumed"] == total and snap["forwarded"] == len(legiti.accepted)
    return 0 if ok else 1


def run_demo(events: int, metrics_port: int, sink: str = "legiti") -> int:
    configure("ERROR", "console")
    port = metrics_port
    if port and not _port_free(port):
        port = free_port()
    try:
        result: int = run_event_loop(_demo(events, port, sink))
    except BrokerUnavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return result


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
