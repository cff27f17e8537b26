"""Settings → keyword arguments for aiokafka clients (security, identity, timeouts).

Kept apart from the clients so that what a Strimzi, MSK or Confluent Cloud
setup needs can be checked without a broker.
"""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from forwarder import __version__
from forwarder.config import Settings
from forwarder.ops.logs import register_secret


class KafkaSecretError(RuntimeError):
    """A Kafka credential file cannot be read."""


def _sasl_password(settings: Settings) -> str | None:
    if settings.kafka_sasl_password is not None:
        return settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_sasl_password_file is not None:
        try:
            password = settings.kafka_sasl_password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            path = settings.kafka_sasl_password_file
            raise KafkaSecretError(
                f"cannot read FORWARDER_KAFKA_SASL_PASSWORD_FILE {path}: {exc.strerror}"
            ) from exc
        register_secret(password)
        return password
    return None


def client_options(settings: Settings) -> dict[str, Any]:
    """Options shared by the consumer and the dead-letter producer."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": f"{settings.kafka_client_id}/{__version__}",
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=(
                settings.kafka_ssl_key_password.get_secret_value()
                if settings.kafka_ssl_key_password
                else None
            ),
        )
        context.check_hostname = settings.kafka_ssl_check_hostname
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _sasl_password(settings)
    return options


def consumer_options(settings: Settings) -> dict[str, Any]:
    return {
        **client_options(settings),
        "group_id": settings.kafka_group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.kafka_auto_offset_reset,
        "max_poll_records": settings.kafka_max_poll_records,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "isolation_level": "read_committed",
    }


def producer_options(settings: Settings) -> dict[str, Any]:
    return {**client_options(settings), "acks": "all", "linger_ms": 5}
