"""The sandbox Legiti stub, recording when each event arrived, for the latency measurement.

Latency is measured from outside the forwarder: from the moment the benchmark
hands a record to the producer (its Kafka timestamp) to the moment this sink has
read the request. Arrival times are `time.monotonic()`, which on Linux is one
clock for every process on the machine, so they compare directly with the
producer's. On SIGTERM the accepted requests are written out as a JSON list of
`[idempotency_key, arrival]` pairs.

Run: `python -m forwarder.bench.recording_sink --port N --dump PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import Sequence
from pathlib import Path

import orjson

from forwarder.runtime import install_signal_handlers, run_event_loop
from forwarder.sandbox.legiti import LegitiStub


async def _serve(port: int) -> list[tuple[str | None, float]]:
    # The collector paused this process for up to 7 ms (generation-1 passes, measured with
    # gc.callbacks), charged to the reader measured. What it records stays alive until the
    # end anyway, and the process lives for one latency run: a few seconds' garbage.
    gc.disable()
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    async with LegitiStub(port=port, recording=True) as stub:
        print(f"listening {stub.url}", flush=True)
        await stopping.wait()
    return [(r.idempotency_key, r.at) for r in stub.accepted]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m forwarder.bench.recording_sink")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dump", type=Path, required=True)
    args = parser.parse_args(argv)
    accepted = run_event_loop(_serve(args.port))
    args.dump.write_bytes(orjson.dumps(accepted))


if __name__ == "__main__":
    main()
