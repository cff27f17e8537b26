"""The pyreqwest-backed httpx transport says on the wire what the sink built, and no more.

A raw asyncio server (plain or TLS from a throw-away CA) records the bytes it
receives, so these tests see exactly what Legiti would: one Host, one
Content-Length, no redirect followed, and certificates really verified.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from forwarder.sinks.legiti.transport import ReqwestTransport

BODY = b'{"user_id":"u-1","action_type":"logout"}'


@dataclass
class RawServer:
    answer: bytes
    url: str = ""
    received: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            self.received.append(head + await reader.readexactly(length))
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a client that hung up (a refused certificate) sent nothing to record
        finally:
            writer.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def serve(answer: bytes, tls: ssl.SSLContext | None = None) -> AsyncIterator[RawServer]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    raw.url = f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{port}/auth"
    async with server:
        yield raw


@pytest.fixture
async def created() -> AsyncIterator[RawServer]:
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nRetry-After: 3\r\n\r\n{}"
    async for raw in serve(answer):
        yield raw


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[RawServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    async for raw in serve(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", context):
        yield raw


@pytest.fixture
async def transport() -> AsyncIterator[ReqwestTransport]:
    client = ReqwestTransport(4)
    yield client
    await client.aclose()


@pytest.fixture
async def redirecting() -> AsyncIterator[RawServer]:
    answer = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
    async for raw in serve(answer):
        yield raw


def request(url: str, timeout: float = 2.0) -> httpx.Request:
    return httpx.Request(
        "POST",
        url,
        headers={"Content-Type": "application/json", "Idempotency-Key": "k-1"},
        content=BODY,
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )


async def test_sends_the_request_as_built_and_reads_the_whole_answer(
    created: RawServer, transport: ReqwestTransport
) -> None:
    response = await transport.handle_async_request(request(created.url))
    assert response.status_code == 201
    assert response.headers["retry-after"] == "3"
    assert isinstance(response.stream, httpx.ByteStream)
    assert await response.aread() == b"{}"
    [wire] = created.received
    head, body = wire.split(b"\r\n\r\n", 1)
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"post /auth http/1.1"
    assert body == BODY
    names = [line.split(b":", 1)[0] for line in lines[1:]]
    assert names.count(b"host") == 1
    assert names.count(b"content-length") == 1
    assert b"idempotency-key: k-1" in lines


async def test_a_redirect_is_an_answer_not_an_instruction(
    redirecting: RawServer, transport: ReqwestTransport
) -> None:
    response = await transport.handle_async_request(request(redirecting.url))
    assert response.status_code == 307
    assert len(redirecting.received) == 1


async def test_an_untrusted_certificate_is_refused(
    tls_server: RawServer, transport: ReqwestTransport
) -> None:
    with pytest.raises(httpx.TransportError):
        await transport.handle_async_request(request(tls_server.url))
    assert tls_server.received == []


async def test_no_answer_in_time_is_a_timeout(transport: ReqwestTransport) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(httpx.TimeoutException):
            await transport.handle_async_request(
                request(f"http://127.0.0.1:{port}/auth", timeout=0.2)
            )


async def test_ssl_cert_file_names_the_trust_store(
    ca: trustme.CA, tls_server: RawServer, tmp_path: Path
) -> None:
    """Operators point SSL_CERT_FILE at their CA bundle; it is read when the client is built,
    so each case runs in a fresh interpreter."""
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    script = (
        "import asyncio, httpx\n"
        "from forwarder.sinks.legiti.transport import ReqwestTransport\n"
        "async def main():\n"
        "    transport = ReqwestTransport(1)\n"
        "    try:\n"
        f"        request = httpx.Request('GET', {tls_server.url!r})\n"
        "        response = await transport.handle_async_request(request)\n"
        "        print(response.status_code)\n"
        "    except httpx.TransportError:\n"
        "        print('refused')\n"
        "    finally:\n"
        "        await transport.aclose()\n"
        "asyncio.run(main())\n"
    )

    async def run(extra: dict[str, str]) -> str:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env={**environment, **extra}, stdout=subprocess.PIPE
        )
        output, _ = await process.communicate()
        return output.decode().strip()

    assert await run({}) == "refused"
    assert await run({"SSL_CERT_FILE": str(bundle)}) == "201"
