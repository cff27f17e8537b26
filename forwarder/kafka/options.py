"""Settings → keyword arguments for aiokafka clients (security, identity, timeouts).

Kept apart from the clients so that what a Strimzi, MSK or Confluent Cloud
setup needs can be checked without a broker.
"""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from forwarder import __version__
from forwarder.config import KafkaSettings
from forwarder.ops.logs import register_secret


class KafkaSecretError(RuntimeError):
    """A Kafka credential file cannot be read."""


def _sasl_password(kafka: KafkaSettings) -> str | None:
    if kafka.sasl_password is not None:
        return kafka.sasl_password.get_secret_value()
    if kafka.sasl_password_file is not None:
        try:
            password = kafka.sasl_password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            path = kafka.sasl_password_file
            raise KafkaSecretError(
                f"cannot read FORWARDER_KAFKA_SASL_PASSWORD_FILE {path}: {exc.strerror}"
            ) from exc
        register_secret(password)
        return password
    return None


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Options shared by the consumer and the dead-letter producer."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}/{__version__}",
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
            certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
            keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
            password=(
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            ),
        )
        context.check_hostname = kafka.ssl_check_hostname
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = _sasl_password(kafka)
    return options


def consumer_options(
    kafka: KafkaSettings, group_id: str | None = None, rebalance_timeout: float | None = None
) -> dict[str, Any]:
    """The forwarder's consumer; `group_id` replaces the configured group for a tool that
    reads as a group of its own (a dead-letter replay). `rebalance_timeout` (seconds,
    never below the session timeout) is how long the group waits for a member's revoke
    callback: the forwarder spends it letting the revoked partitions' requests finish."""
    rebalance_ms = kafka.session_timeout_ms
    if rebalance_timeout is not None:
        rebalance_ms = max(rebalance_ms, int(rebalance_timeout * 1000))
    return {
        **client_options(kafka),
        "group_id": group_id or kafka.group_id,
        "rebalance_timeout_ms": rebalance_ms,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "max_poll_records": kafka.max_poll_records,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
        "isolation_level": "read_committed",
    }


def producer_options(kafka: KafkaSettings) -> dict[str, Any]:
    return {**client_options(kafka), "acks": "all", "linger_ms": 5}
