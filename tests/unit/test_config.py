"""Configuration: precedence, validation messages that name the key, masking, Kafka options."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from forwarder.config import (
    SECTIONS,
    SINK_KINDS,
    ConfigError,
    KafkaToolSettings,
    documented_env_names,
    load,
    load_settings,
    masked,
)
from forwarder.kafka.options import consumer_options, producer_options
from forwarder.limits.rate import Rate

BASE = {
    "FORWARDER_KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
    "FORWARDER_KAFKA_TOPICS": "auth-events, auth-events-eu",
    "FORWARDER_LEGITI_BASE_URL": "https://api.example.com/",
    "FORWARDER_LEGITI_API_TOKEN": "s3cret-token",
}


def test_defaults_and_parsing() -> None:
    settings = load_settings(BASE)
    assert settings.kafka.topics == ["auth-events", "auth-events-eu"]
    assert settings.kafka.group_id == "legiti-forwarder"
    assert settings.kafka.auto_offset_reset == "earliest"
    assert settings.kafka.dead_letter_topic == "auth-events.dlq"
    assert settings.sink.base_url == "https://api.example.com"
    assert settings.sink.max_in_flight == 64
    assert settings.dedupe.ttl_seconds == 3600
    assert settings.dedupe.max_entries == 1_000_000
    assert settings.retry.max_elapsed_seconds == 900
    assert settings.sink.http_timeout_seconds == 10
    assert settings.ops.shutdown_timeout_seconds == 20
    assert settings.ops.metrics_port == 9102
    assert settings.ops.log_format == "json"
    assert settings.limits.rate_limit is None


def test_precedence_environment_then_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "forwarder.toml"
    config.write_text('max_in_flight = 8\nrate_limit = "30/minute"\nlog_level = "debug"\n')
    env = {
        **BASE,
        "FORWARDER_MAX_IN_FLIGHT": "16",
        "FORWARDER_HTTP_TIMEOUT_SECONDS": "3",
        "FORWARDER_CONFIG_FILE": str(config),
    }
    settings = load_settings(env, {"log_level": "warning"})
    assert settings.sink.http_timeout_seconds == 3
    assert settings.sink.max_in_flight == 8
    assert settings.limits.rate_limit == Rate(30, 60.0)
    assert settings.ops.log_level == "WARNING"
    assert load_settings(env, {"max_in_flight": "4"}).sink.max_in_flight == 4


def test_every_bad_key_is_named_once() -> None:
    env = {**BASE, "FORWARDER_MAX_IN_FLIGHT": "0", "FORWARDER_RATE_LIMIT": "lots"}
    del env["FORWARDER_KAFKA_TOPICS"]
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(p.startswith("FORWARDER_MAX_IN_FLIGHT:") for p in problems)
    assert any(p.startswith("FORWARDER_RATE_LIMIT:") and "30/minute" in p for p in problems)
    assert any(p.startswith("FORWARDER_KAFKA_TOPICS: required") for p in problems)
    assert "\n" not in str(caught.value)


def test_flag_errors_name_the_flag_and_file_errors_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--max-in-flight"):
        load_settings(BASE, {"max_in_flight": "many"})
    config = tmp_path / "bad.toml"
    config.write_text("max_inflight = 3\n")
    with pytest.raises(ConfigError, match=r"max_inflight \(in .*bad.toml\): unknown setting"):
        load_settings(BASE, config_file=config)
    config.write_text("max_in_flight = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings(BASE, config_file=config)


def test_unknown_environment_variables_are_ignored() -> None:
    """Kubernetes injects FORWARDER_PORT=tcp://… for a Service named forwarder."""
    settings = load_settings({**BASE, "FORWARDER_PORT": "tcp://10.0.0.1:9102"})
    assert settings.ops.metrics_port == 9102


def test_exactly_one_token_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of legiti_api_token"):
        load_settings({**BASE, "FORWARDER_LEGITI_API_TOKEN_FILE": "/run/token"})
    without = {k: v for k, v in BASE.items() if k != "FORWARDER_LEGITI_API_TOKEN"}
    with pytest.raises(ConfigError, match="exactly one of legiti_api_token"):
        load_settings(without)


def test_secrets_never_show_in_errors_or_masked_output() -> None:
    settings = load_settings({**BASE, "FORWARDER_KAFKA_SASL_PASSWORD": "kafka-pw"})
    shown = str(masked(settings))
    assert "s3cret-token" not in shown
    assert "kafka-pw" not in shown
    assert masked(settings)["sink"]["legiti_api_token"] == "********"
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "FORWARDER_LEGITI_API_TOKEN": "", "FORWARDER_MAX_IN_FLIGHT": "x"})
    assert "s3cret" not in str(caught.value)


def test_sasl_scram_options() -> None:
    settings = load_settings(
        {
            **BASE,
            "FORWARDER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FORWARDER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FORWARDER_KAFKA_SASL_USERNAME": "forwarder",
            "FORWARDER_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    options = consumer_options(settings.kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "forwarder"
    assert options["sasl_plain_password"] == "pw"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["enable_auto_commit"] is False
    assert options["group_id"] == "legiti-forwarder"
    assert producer_options(settings.kafka)["acks"] == "all"


def test_sasl_needs_a_user_name() -> None:
    with pytest.raises(ConfigError, match="kafka_sasl_username is required"):
        load_settings({**BASE, "FORWARDER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})


def test_sasl_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    settings = load_settings(
        {
            **BASE,
            "FORWARDER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "FORWARDER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "FORWARDER_KAFKA_SASL_USERNAME": "forwarder",
            "FORWARDER_KAFKA_SASL_PASSWORD_FILE": str(secret),
        }
    )
    options = consumer_options(settings.kafka)
    assert options["sasl_plain_password"] == "from-file"
    assert "ssl_context" not in options


def test_mutual_tls_loads_the_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("forwarder.example")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    settings = load_settings(
        {
            **BASE,
            "FORWARDER_KAFKA_SECURITY_PROTOCOL": "SSL",
            "FORWARDER_KAFKA_SSL_CAFILE": str(ca_file),
            "FORWARDER_KAFKA_SSL_CERTFILE": str(cert_file),
            "FORWARDER_KAFKA_SSL_KEYFILE": str(key_file),
        }
    )
    context = consumer_options(settings.kafka)["ssl_context"]
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
    assert "sasl_mechanism" not in consumer_options(settings.kafka)


def test_a_kafka_only_command_needs_no_sink_settings() -> None:
    kafka_only = {
        key: value for key, value in BASE.items() if not key.startswith("FORWARDER_LEGITI_")
    }
    settings = load(KafkaToolSettings, {**kafka_only, "FORWARDER_MAX_IN_FLIGHT": "nonsense"})
    assert settings.kafka.topics == ["auth-events", "auth-events-eu"]
    assert settings.kafka.dead_letter_topic == "auth-events.dlq"
    with pytest.raises(ConfigError, match="FORWARDER_LEGITI_BASE_URL: required"):
        load_settings(kafka_only)


def test_an_unknown_sink_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, "FORWARDER_SINK": "carrier-pigeon"})
    assert caught.value.problems == ("FORWARDER_SINK: one of legiti, mcp (got 'carrier-pigeon')",)


def test_every_public_name_is_one_field_of_one_section() -> None:
    names = [
        field.alias for section in SECTIONS.values() for field in section.model_fields.values()
    ]
    # The sinks' sections are alternatives: what they share (timeout, in-flight bound,
    # the `sink` switch itself) is one public name.
    sink_names = {
        field.alias for kind in SINK_KINDS.values() for field in kind.model_fields.values()
    }
    assert not sink_names & set(names)
    names += sorted(name for name in sink_names if name is not None)
    assert len(names) == len(set(names)) == len(documented_env_names())
