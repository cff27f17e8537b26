"""A local stand-in for Legiti's track_auth API that can be told to misbehave.

It also serves Legiti's collection endpoint, `POST /auth`, which the MCP server for
Legiti calls (see `sandbox.mcp_server`); both endpoints share the faults, the
credentials, the counters and the records, so a test sets a fault once whichever
way the events arrive.

Integration tests, `forwarder demo` and the throughput benchmark all need an HTTP peer
that answers like Legiti but can be made slow, flaky, strict or rate limited on cue,
without a network and without credentials. It is written on bare asyncio streams rather
than a web framework so that it costs the benchmark little CPU: a request is one header
split, one orjson parse and, on the happy path, one pre-built answer.

Run it as its own process with `python -m forwarder.sandbox.legiti --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import time
from bisect import insort
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from http import HTTPStatus
from operator import attrgetter
from types import TracebackType
from typing import Final, NamedTuple, Self, TypedDict

import orjson

from forwarder.runtime import install_signal_handlers, run_event_loop

AUTH_PATH: Final = b"/ticketing/v1/auth"
COLLECT_PATH: Final = b"/auth"
STATS_PATH: Final = b"/_stub/stats"
RESET_PATH: Final = b"/_stub/reset"
ACTION_TYPES: Final = frozenset({"login_success", "login_failure", "logout"})
TOKEN: Final = "test-token"
"""The bearer token the stand-in accepts unless told otherwise."""

DROPPED: Final = 0
"""Status recorded for a request the stub hung up on, so drops show up in the counters."""

MAX_BODY: Final = 1 << 20
"""Bigger bodies are refused: a track_auth event is a few dozen bytes, so this is a bug."""

_WRITE_HIGH_WATER: Final = 1 << 16
_POLL_INTERVAL: Final = 0.01

_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
_CREATED_BODY: Final = b'{"message":"auth tracked"}'
_UNAUTHORIZED_BODY: Final = b'{"message":"invalid credentials"}'
_INJECTED_400_BODY: Final = orjson.dumps(
    {"error_message": {"_schema": ["Rejected by the sandbox stub."]}}
)
_REJECTED_USER_BODY: Final = orjson.dumps(
    {"error_message": {"user_id": ["Rejected by the sandbox stub."]}}
)
_NOT_AN_OBJECT: Final = {"_schema": ["Invalid input type."]}
_ACTION_TYPE_CHOICES: Final = ", ".join(sorted(ACTION_TYPES))
_COLLECT_ACTIONS: Final = ("login", "logout")
_by_arrival: Final = attrgetter("at")


_HEAD_TEMPLATE: Final = (
    b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: %s\r\n%s\r\n"
)


def _response(status: int, body: bytes, keep_alive: bool, extra_headers: bytes = b"") -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    reason = _REASONS.get(status, b"Unknown")
    return _HEAD_TEMPLATE % (status, reason, len(body), connection, extra_headers) + body


def _message(status: int, text: str, keep_alive: bool, extra_headers: bytes = b"") -> bytes:
    return _response(status, orjson.dumps({"message": text}), keep_alive, extra_headers)


_CREATED_KEEP_ALIVE: Final = _response(201, _CREATED_BODY, True)


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the stub saw it; `status` is what it answered, or DROPPED.

    `at` is time.monotonic() of this process when the request had been read, so tests
    running the stub in-process can compare it with their own monotonic timestamps.
    `user_agent` is the HTTP header. A collection call (`path` "/auth") is recorded
    in the same terms: `user_id` is its `account_id`, `action_type` what its `action`
    and `success` amount to, and `ip`, `event_user_agent`, `timestamp` are what it
    said about the attempt.
    """

    user_id: str | None
    action_type: str | None
    idempotency_key: str | None
    authorization: str | None
    user_agent: str | None
    status: int
    at: float
    path: str = AUTH_PATH.decode()
    ip: str | None = None
    event_user_agent: str | None = None
    timestamp: float | None = None


class _Attempt(NamedTuple):
    """What a collection call said about the attempt, kept for `Received`."""

    ip: str | None = None
    user_agent: str | None = None
    timestamp: float | None = None


_NO_ATTEMPT: Final = _Attempt()


@dataclass
class Faults:
    """Misbehaviour to inject; the stub rereads it on every request, so tests mutate it live.

    Precedence, first match wins: a `script` step; `status`; `drop_rate`; `error_rate`;
    the real API's own 401 and 400 answers; `status_for_user`; `reject_user_ids`;
    `rate_limit`. Only a request about to be accepted spends a rate-limit token, as a
    real limiter would not count requests it never had to serve. A script step overrides
    every other fault for its request: "ok" gets exactly the real API's answer, and an
    unknown step is answered 500 so that a typo fails the test instead of passing quietly.

    `retry_after` is sent with every injected error answer, and 429s always carry a
    Retry-After ("1" unless `retry_after` says otherwise) because clients must be able
    to rely on it. `latency` delays every answer, drops included, and overlaps across
    connections. `seed` fixes the random drops and errors; it is read once, at creation.
    """

    latency: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    script: collections.deque[int | str] = field(default_factory=collections.deque)
    drop_rate: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    rate_limit: float | None = None
    rate_limit_burst: int | None = None
    reject_user_ids: set[str] = field(default_factory=set)
    status_for_user: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class Stats(TypedDict):
    """Counters since the last reset; the times are the stub process's own clocks.

    `*_accepted_at` come from time.monotonic() in the stub's process and are only
    comparable with other readings from that process; `wall_*` come from time.time()
    for comparing across processes. `status_counts` is keyed by the status as a string,
    with "0" counting dropped requests.
    """

    total: int
    accepted: int
    status_counts: dict[str, int]
    first_accepted_at: float | None
    last_accepted_at: float | None
    wall_first_accepted_at: float | None
    wall_last_accepted_at: float | None


def _validate(body: bytes) -> tuple[str | None, str | None, dict[str, list[str]] | None]:
    """Check the payload the way Legiti's schema does, keeping its error shape."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, _NOT_AN_OBJECT
    if not isinstance(payload, dict):
        return None, None, _NOT_AN_OBJECT
    user_id = payload.get("user_id")
    action_type = payload.get("action_type")
    errors: dict[str, list[str]] = {}
    if "user_id" not in payload:
        errors["user_id"] = ["Missing data for required field."]
    elif not isinstance(user_id, str):
        errors["user_id"] = ["Not a valid string."]
    elif not user_id:
        errors["user_id"] = ["Shorter than minimum length 1."]
    if "action_type" not in payload:
        errors["action_type"] = ["Missing data for required field."]
    elif not isinstance(action_type, str) or action_type not in ACTION_TYPES:
        errors["action_type"] = [f"Must be one of: {_ACTION_TYPE_CHOICES}."]
    return (
        user_id if isinstance(user_id, str) else None,
        action_type if isinstance(action_type, str) else None,
        errors or None,
    )


def _validate_collect(
    body: bytes,
) -> tuple[str | None, str | None, dict[str, list[str]] | None, _Attempt]:
    """Check a collection call (`POST /auth`) the way `_validate` checks track_auth.

    `success` is required for a login; `ip`, `user_agent` and `timestamp` are optional
    and may be null."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, _NOT_AN_OBJECT, _NO_ATTEMPT
    if not isinstance(payload, dict):
        return None, None, _NOT_AN_OBJECT, _NO_ATTEMPT
    errors: dict[str, list[str]] = {}
    account_id = payload.get("account_id")
    if "account_id" not in payload:
        errors["account_id"] = ["Missing data for required field."]
    elif not isinstance(account_id, str):
        errors["account_id"] = ["Not a valid string."]
    elif not account_id:
        errors["account_id"] = ["Shorter than minimum length 1."]
    action, success = payload.get("action"), payload.get("success")
    action_type: str | None = None
    if action not in _COLLECT_ACTIONS:
        errors["action"] = [f"Must be one of: {', '.join(_COLLECT_ACTIONS)}."]
    elif action == "logout":
        action_type = "logout"
    elif isinstance(success, bool):
        action_type = "login_success" if success else "login_failure"
    if not isinstance(success, bool) and (action == "login" or success is not None):
        errors["success"] = ["Not a valid boolean."]
    ip, user_agent, timestamp = (payload.get(name) for name in ("ip", "user_agent", "timestamp"))
    for name, value in (("ip", ip), ("user_agent", user_agent)):
        if value is not None and not isinstance(value, str):
            errors[name] = ["Not a valid string."]
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, int | float)
    ):
        errors["timestamp"] = ["Not a valid number."]
    attempt = _Attempt(
        ip if isinstance(ip, str) else None,
        user_agent if isinstance(user_agent, str) else None,
        float(timestamp) if "timestamp" not in errors and timestamp is not None else None,
    )
    return (
        account_id if isinstance(account_id, str) else None,
        action_type,
        errors or None,
        attempt,
    )


def _parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes], bool] | None:
    """Split a request head into method, path, lower-cased headers and keep-alive."""
    lines = head.lstrip(b"\r\n").split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if version == b"HTTP/1.1":
        keep_alive = True
    elif version == b"HTTP/1.0":
        keep_alive = False
    else:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        headers[name.strip().lower()] = value.strip()
    connection = headers.get(b"connection")
    if connection is not None:
        connection = connection.lower()
        if b"close" in connection:
            keep_alive = False
        elif b"keep-alive" in connection:
            keep_alive = True
    return method, target.partition(b"?")[0], headers, keep_alive


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class LegitiStub:
    """An in-memory Legiti that records what it was sent and obeys `faults`.

    Only requests to the track_auth path are recorded and counted; the control paths
    (`GET /_stub/stats`, `POST /_stub/reset`) exist so a stub in another process can be
    observed. Records are made once the answer is written, so a test that sees a request
    in `accepted` knows the client has been sent its 201; both lists stay ordered by
    arrival even when latency changes mid-flight. With `recording` off only the counters
    are kept, so a long benchmark does not grow memory.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: AbstractSet[str] = frozenset({TOKEN}),
        *,
        faults: Faults | None = None,
        recording: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.tokens: frozenset[str] = frozenset(tokens)
        self.faults = faults if faults is not None else Faults()
        self.recording = recording
        self.requests: list[Received] = []
        self.accepted: list[Received] = []
        self.status_counts: collections.Counter[int] = collections.Counter()
        self.total_count = 0
        self.accepted_count = 0
        self.first_accepted_at: float | None = None
        self.last_accepted_at: float | None = None
        self.wall_first_accepted_at: float | None = None
        self.wall_last_accepted_at: float | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._bucket_shape: tuple[float, int] | None = None
        self._bucket_tokens = 0.0
        self._bucket_at = 0.0

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the stub is already started")
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and hang up on every client, as a crashing server would."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def reset(self) -> None:
        """Forget traffic seen so far; faults stay, they are the test's configuration."""
        self.requests.clear()
        self.accepted.clear()
        self.status_counts.clear()
        self.total_count = 0
        self.accepted_count = 0
        self.first_accepted_at = None
        self.last_accepted_at = None
        self.wall_first_accepted_at = None
        self.wall_last_accepted_at = None

    def stats(self) -> Stats:
        return {
            "total": self.total_count,
            "accepted": self.accepted_count,
            "status_counts": {str(status): n for status, n in self.status_counts.items()},
            "first_accepted_at": self.first_accepted_at,
            "last_accepted_at": self.last_accepted_at,
            "wall_first_accepted_at": self.wall_first_accepted_at,
            "wall_last_accepted_at": self.wall_last_accepted_at,
        }

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - tests read better with the deadline inline
    ) -> None:
        """Poll instead of sleeping, so tests wait exactly as long as the system needs."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                recent = ", ".join(
                    f"{r.user_id}/{r.action_type}->{r.status}" for r in self.requests[-5:]
                )
                raise TimeoutError(
                    f"{getattr(predicate, '__qualname__', predicate)!s} still false after "
                    f"{timeout}s; the stub saw {self.total_count} requests, statuses "
                    f"{dict(self.status_counts)}, most recent: [{recent}]"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Own each connection's task, so that `stop` can hang up on every client."""
        task = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one connection's requests strictly in order, which keeps pipelining safe."""
        try:
            keep_alive = True
            while keep_alive:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(_message(431, "request header fields too large", False))
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = _parse_head(head)
                if request is None:
                    writer.write(_message(400, "malformed request", False))
                    return
                method, path, headers, keep_alive = request
                length = headers.get(b"content-length")
                if b"transfer-encoding" in headers or (length is None and method == b"POST"):
                    writer.write(_message(411, "content-length required", False))
                    return
                if length is None:
                    body = b""
                elif not length.isdigit():
                    writer.write(_message(400, "invalid content-length", False))
                    return
                elif int(length) > MAX_BODY:
                    writer.write(_message(413, "request body too large", False))
                    return
                else:
                    try:
                        body = await reader.readexactly(int(length))
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                if path == AUTH_PATH and method == b"POST":
                    keep_alive = await self._track_auth(writer, headers, body, keep_alive)
                elif path == COLLECT_PATH and method == b"POST":
                    keep_alive = await self._track_auth(
                        writer, headers, body, keep_alive, collect=True
                    )
                else:
                    writer.write(self._control(method, path, keep_alive))
                if writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                    await writer.drain()
        finally:
            writer.close()

    async def _track_auth(
        self,
        writer: asyncio.StreamWriter,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        *,
        collect: bool = False,
    ) -> bool:
        """Answer one track_auth (or, with `collect`, collection) request and return
        whether the connection stays open."""
        at = time.monotonic()
        wall = time.time()
        faults = self.faults
        if collect:
            user_id, action_type, errors, attempt = _validate_collect(body)
        else:
            (user_id, action_type, errors), attempt = _validate(body), _NO_ATTEMPT
        status, answer = self._decide(faults, headers, user_id, errors, at, keep_alive)
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if status == DROPPED:
            keep_alive = False
        else:
            writer.write(answer)
        self.total_count += 1
        self.status_counts[status] += 1
        if status == 201:
            self.accepted_count += 1
            if self.first_accepted_at is None or at < self.first_accepted_at:
                self.first_accepted_at = at
                self.wall_first_accepted_at = wall
            if self.last_accepted_at is None or at > self.last_accepted_at:
                self.last_accepted_at = at
                self.wall_last_accepted_at = wall
        if self.recording:
            received = Received(
                user_id=user_id,
                action_type=action_type,
                idempotency_key=_text(headers.get(b"idempotency-key")),
                authorization=_text(headers.get(b"authorization")),
                user_agent=_text(headers.get(b"user-agent")),
                status=status,
                at=at,
                path=(COLLECT_PATH if collect else AUTH_PATH).decode(),
                ip=attempt.ip,
                event_user_agent=attempt.user_agent,
                timestamp=attempt.timestamp,
            )
            insort(self.requests, received, key=_by_arrival)
            if status == 201:
                insort(self.accepted, received, key=_by_arrival)
        return keep_alive

    def _decide(
        self,
        faults: Faults,
        headers: dict[bytes, bytes],
        user_id: str | None,
        errors: dict[str, list[str]] | None,
        now: float,
        keep_alive: bool,
    ) -> tuple[int, bytes]:
        """Pick the status and the full answer, following the precedence in `Faults`."""
        if faults.script:
            step = faults.script.popleft()
            if step == "drop":
                return DROPPED, b""
            if isinstance(step, int):
                return step, self._injected(step, faults, keep_alive)
            if step != "ok":
                return 500, _message(500, f"unknown script step {step!r}", keep_alive)
            return self._verdict(headers, errors, keep_alive)
        if faults.status is not None:
            return faults.status, self._injected(faults.status, faults, keep_alive)
        if faults.drop_rate > 0 and faults.rng.random() < faults.drop_rate:
            return DROPPED, b""
        if faults.error_rate > 0 and faults.rng.random() < faults.error_rate:
            return 503, self._injected(503, faults, keep_alive)
        status, answer = self._verdict(headers, errors, keep_alive)
        if status != 201 or user_id is None:
            return status, answer
        forced = faults.status_for_user.get(user_id)
        if forced is not None:
            return forced, self._injected(forced, faults, keep_alive)
        if user_id in faults.reject_user_ids:
            return 400, _response(400, _REJECTED_USER_BODY, keep_alive)
        if faults.rate_limit is not None and not self._take_token(
            faults.rate_limit, faults.rate_limit_burst, now
        ):
            return 429, self._injected(429, faults, keep_alive)
        return status, answer

    def _verdict(
        self, headers: dict[bytes, bytes], errors: dict[str, list[str]] | None, keep_alive: bool
    ) -> tuple[int, bytes]:
        """What the real API would answer: credentials first, then the payload."""
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or token.strip().decode("latin-1") not in self.tokens:
            return 401, _response(401, _UNAUTHORIZED_BODY, keep_alive)
        if errors is not None:
            return 400, _response(400, orjson.dumps({"error_message": errors}), keep_alive)
        if keep_alive:
            return 201, _CREATED_KEEP_ALIVE
        return 201, _response(201, _CREATED_BODY, keep_alive)

    @staticmethod
    def _injected(status: int, faults: Faults, keep_alive: bool) -> bytes:
        retry_after = faults.retry_after
        if retry_after is None and status == 429:
            retry_after = "1"
        extra = b"" if retry_after is None else b"Retry-After: %s\r\n" % retry_after.encode()
        if status == 201:
            body = _CREATED_BODY
        elif status == 400:
            body = _INJECTED_400_BODY
        elif status == 401:
            body = _UNAUTHORIZED_BODY
        else:
            body = orjson.dumps({"message": _REASONS.get(status, b"error").decode().lower()})
        return _response(status, body, keep_alive, extra)

    def _take_token(self, rate: float, burst: int | None, now: float) -> bool:
        """Token bucket; a changed rate or burst starts a fresh, full bucket."""
        if burst is None:
            burst = max(1, int(rate))
        if self._bucket_shape != (rate, burst):
            self._bucket_shape = (rate, burst)
            self._bucket_tokens = float(burst)
        else:
            elapsed = now - self._bucket_at
            self._bucket_tokens = min(float(burst), self._bucket_tokens + elapsed * rate)
        self._bucket_at = now
        if self._bucket_tokens < 1.0:
            return False
        self._bucket_tokens -= 1.0
        return True

    def _control(self, method: bytes, path: bytes, keep_alive: bool) -> bytes:
        if path == STATS_PATH:
            if method != b"GET":
                return _message(405, "method not allowed", keep_alive, b"Allow: GET\r\n")
            return _response(200, orjson.dumps(self.stats()), keep_alive)
        if path == RESET_PATH:
            if method != b"POST":
                return _message(405, "method not allowed", keep_alive, b"Allow: POST\r\n")
            self.reset()
            return _message(200, "reset", keep_alive)
        if path in (AUTH_PATH, COLLECT_PATH):
            return _message(405, "method not allowed", keep_alive, b"Allow: POST\r\n")
        return _message(404, "not found", keep_alive)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m forwarder.sandbox.legiti",
        description="Serve a local Legiti track_auth API with optional fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the kernel pick one")
    parser.add_argument(
        "--token",
        action="extend",
        nargs="+",
        default=[],
        help=f"accepted bearer token, repeatable (default: {TOKEN})",
    )
    parser.add_argument(
        "--no-record", action="store_true", help="keep only counters, for long benchmarks"
    )
    parser.add_argument("--rate-limit", type=float, help="accepted requests per second")
    parser.add_argument("--rate-limit-burst", type=int)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per answer")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    return parser.parse_args(argv)


async def _serve_until_signalled(stub: LegitiStub) -> None:
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    async with stub:
        print(f"listening {stub.url}", flush=True)
        await stopping.wait()


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    stub = LegitiStub(
        args.host,
        args.port,
        frozenset(args.token or [TOKEN]),
        recording=not args.no_record,
        faults=Faults(
            latency=args.latency,
            drop_rate=args.drop_rate,
            error_rate=args.error_rate,
            seed=args.seed,
            rate_limit=args.rate_limit,
            rate_limit_burst=args.rate_limit_burst,
        ),
    )
    run_event_loop(_serve_until_signalled(stub))


if __name__ == "__main__":
    main()
