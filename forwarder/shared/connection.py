"""Which Redis the group shares, parsed once from FORWARDER_REDIS_URL and its password file.

The URL is the form every managed Redis and Valkey hands out:
`redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS (the server's
certificate is verified; redis-py's own query options such as `ssl_ca_certs=` pass
through). A password may come from the URL or from FORWARDER_REDIS_PASSWORD_FILE
(a mounted Secret), not both: two sources would leave the reader guessing which
one is used. The password is registered as a secret, so no log line carries it,
and `display` is the URL with the password masked, for the start-up line.

Every key is prefixed by the consumer group id: the group is what shares the
allowance, and two groups (two deployments) on one Redis must not share theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from forwarder.ops.logs import register_secret

URL_KEY = "FORWARDER_REDIS_URL"
PASSWORD_FILE_KEY = "FORWARDER_REDIS_PASSWORD_FILE"
SCHEMES = ("redis", "rediss")
MASK = "****"


@dataclass(frozen=True)
class RedisTarget:
    """A Redis to connect to and the key prefix of one consumer group in it."""

    url: str
    password: str | None
    group: str
    display: str

    @property
    def prefix(self) -> str:
        """`forwarder:{<group>}:`. The braces are a Redis Cluster hash tag, used only
        by the keys that must share a slot (the limits and their marker, which one
        script touches together); de-duplication keys go without it, to spread out."""
        return f"forwarder:{{{self.group}}}:"

    @property
    def dedupe_prefix(self) -> str:
        return f"forwarder:{self.group}:dedupe:"

    def client(self, timeout: float) -> Redis:
        """A client that fails fast: no retries of its own (the callers fall back to
        local limits and come back by themselves), `timeout` for connecting and for
        every reply."""
        return Redis.from_url(
            self.url,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )


def redis_target(url: str, group: str, password_file: Path | None = None) -> RedisTarget:
    """Check and parse the configured URL; a ValueError names the setting at fault."""
    parts = urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{URL_KEY} must start with redis:// or rediss://, got {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{URL_KEY} has an invalid port: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{URL_KEY} names no host")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(f"{URL_KEY} path must be a database number like /0, got {parts.path!r}")
    if parts.fragment:
        raise ValueError(f"{URL_KEY} must not have a #fragment")
    in_url = unquote(parts.password) if parts.password is not None else None
    password = in_url
    if password_file is not None:
        if in_url is not None:
            raise ValueError(
                f"{PASSWORD_FILE_KEY} is set and {URL_KEY} has a password too; give only one"
            )
        password = _read_password(password_file)
    register_secret(password)
    if parts.password is not None:
        register_secret(parts.password)  # the URL text itself, in case it is ever shown
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username:
        shown_user = quote(unquote(parts.username), safe="")
        netloc = f"{shown_user}:{MASK}@{netloc}" if in_url is not None else f"{shown_user}@{netloc}"
    elif in_url is not None:
        netloc = f":{MASK}@{netloc}"
    display = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return RedisTarget(url=url.strip(), password=password, group=group, display=display)


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{PASSWORD_FILE_KEY}: cannot read {path}: {exc.__class__.__name__}"
        ) from None
    password = text.rstrip("\r\n")
    if not password:
        raise ValueError(f"{PASSWORD_FILE_KEY}: {path} is empty")
    return password
