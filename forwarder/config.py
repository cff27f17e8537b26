"""Configuration: defaults ← `FORWARDER_*` environment ← TOML file ← CLI flags.

The merge is done here rather than by a settings framework so that every error
can name the key the way the operator wrote it (`FORWARDER_MAX_IN_FLIGHT`,
`max_in_flight` in the TOML file, or `--max-in-flight`), which is what a person
reading a crash-looping pod's last log line needs. Validation itself is pydantic.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from forwarder.limits.rate import Rate, parse_rate

ENV_PREFIX = "FORWARDER_"
CONFIG_FILE_ENV = "FORWARDER_CONFIG_FILE"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _rate(value: object) -> object:
    if isinstance(value, str):
        return parse_rate(value) if value.strip() else None
    return value


def _empty_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


CsvList = Annotated[list[str], BeforeValidator(_split_csv)]
OptionalRate = Annotated[Rate | None, BeforeValidator(_rate)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_none)]
OptionalStr = Annotated[str | None, BeforeValidator(_empty_is_none)]


class Settings(BaseModel):
    """Every setting of the forwarder; field names are the TOML keys and, upper-cased
    behind `FORWARDER_`, the environment variable names."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    # Kafka source
    kafka_bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port]")
    kafka_topics: CsvList = Field(min_length=1, description="comma-separated source topics")
    kafka_group_id: str = Field(
        "legiti-forwarder",
        min_length=1,
        description="consumer group; replicas sharing it split the partitions",
    )
    kafka_client_id: str = Field(
        "legiti-forwarder",
        min_length=1,
        description="client id reported to the brokers (the version is appended)",
    )
    kafka_auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new group starts: earliest (nothing skipped) or latest"
    )
    kafka_max_poll_records: int = Field(
        500, ge=1, le=100_000, description="records fetched per poll at most"
    )
    kafka_session_timeout_ms: int = Field(10_000, ge=1_000, description="group session timeout")
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100, description="group heartbeat interval")
    kafka_fetch_max_wait_ms: int = Field(
        500, ge=0, le=30_000, description="longest the broker holds a fetch that has no records"
    )
    kafka_max_poll_interval_ms: int = Field(
        300_000, ge=1_000, description="longest gap between polls before the group evicts a member"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    kafka_sasl_username: OptionalStr = Field(None, description="SASL user name")
    kafka_sasl_password: OptionalSecret = Field(None, description="SASL password (secret)")
    kafka_sasl_password_file: OptionalPath = Field(
        None, description="file holding the SASL password (a mounted Secret)"
    )
    kafka_ssl_cafile: OptionalPath = Field(
        None, description="CA bundle that signed the brokers' certificates"
    )
    kafka_ssl_certfile: OptionalPath = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: OptionalPath = Field(None, description="client private key (mutual TLS)")
    kafka_ssl_key_password: OptionalSecret = Field(
        None, description="password of the client key (secret)"
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="verify the brokers' host names against their certificates"
    )

    # Dead letters
    dlq_topic: OptionalStr = Field(
        None, description="dead-letter topic; default: the first source topic + .dlq"
    )

    # Legiti sink
    legiti_base_url: str = Field(pattern=r"^https?://[^\s/]+", description="http(s)://host[:port]")
    legiti_api_token: OptionalSecret = Field(None, description="Legiti API token (secret)")
    legiti_api_token_file: OptionalPath = Field(
        None, description="file holding the token, re-read when it changes"
    )
    http_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="time limit for one request to Legiti"
    )
    max_in_flight: int = Field(
        64, ge=1, le=4096, description="requests to Legiti under way at once"
    )
    max_buffered_events: int = Field(
        10_000, ge=1, description="records consumed and unfinished before fetching pauses"
    )

    # Limits and policy
    rate_limit: OptionalRate = Field(None, description="limit on all calls, e.g. 1000/hour")
    rate_limit_login: OptionalRate = Field(
        None, description="limit on track_login calls, e.g. 30/minute"
    )
    rate_limit_logout: OptionalRate = Field(
        None, description="limit on track_logout calls, e.g. 5/second"
    )
    policy_file: OptionalPath = Field(
        None, description="gateway policy JSON: denied tools and their limits"
    )

    # De-duplication
    dedupe_ttl_seconds: float = Field(
        3600.0, ge=0, description="how long a delivered key suppresses copies"
    )
    dedupe_max_entries: int = Field(
        1_000_000, ge=0, description="delivered keys remembered at most (oldest evicted)"
    )

    # Retries and failure handling
    retry_max_elapsed_seconds: float = Field(900.0, ge=0, description="0 retries forever")
    retry_initial_backoff_seconds: float = Field(
        0.5, gt=0, description="ceiling of the first retry's jittered wait"
    )
    retry_max_backoff_seconds: float = Field(
        60.0, gt=0, description="ceiling of any retry's jittered wait"
    )
    circuit_failure_ratio: float = Field(
        0.5, gt=0, le=1, description="share of failed sends that opens the circuit"
    )
    circuit_min_requests: int = Field(
        20, ge=1, description="sends in the window before the circuit may open"
    )
    circuit_window_seconds: float = Field(
        30.0, gt=0, description="window over which failures are counted"
    )
    circuit_max_open_seconds: float = Field(
        60.0, gt=0, description="longest pause between probes while open"
    )

    # CloudEvents type suffixes that decide the action
    cloudevents_login_success_suffix: str = Field(
        "login.succeeded", min_length=1, description="CloudEvents type suffix meaning login_success"
    )
    cloudevents_login_failure_suffix: str = Field(
        "login.failed", min_length=1, description="CloudEvents type suffix meaning login_failure"
    )
    cloudevents_logout_suffix: str = Field(
        "logout", min_length=1, description="CloudEvents type suffix meaning logout"
    )

    # Operations
    commit_interval_seconds: float = Field(
        1.0, gt=0, le=60, description="how often the finished prefix is committed"
    )
    shutdown_timeout_seconds: float = Field(
        20.0, ge=0, description="how long SIGTERM waits for sends under way"
    )
    metrics_host: str = Field(
        "0.0.0.0", description="address of the /metrics, /healthz, /readyz server"
    )
    metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="port of the /metrics, /healthz, /readyz server (0: any free one)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="json (one object per line) or console"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("legiti_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if (self.legiti_api_token is None) == (self.legiti_api_token_file is None):
            raise ValueError(
                "set exactly one of legiti_api_token and legiti_api_token_file"
                " (FORWARDER_LEGITI_API_TOKEN / FORWARDER_LEGITI_API_TOKEN_FILE)"
            )
        if self.kafka_security_protocol.startswith("SASL_") and not self.kafka_sasl_username:
            raise ValueError("kafka_sasl_username is required with a SASL security protocol")
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            raise ValueError("set at most one of kafka_sasl_password and kafka_sasl_password_file")
        if self.retry_max_backoff_seconds < self.retry_initial_backoff_seconds:
            raise ValueError("retry_max_backoff_seconds is below retry_initial_backoff_seconds")
        return self

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.kafka_topics[0]}.dlq"


SECRET_FIELDS = frozenset(
    name for name, field in Settings.model_fields.items() if "Secret" in str(field.annotation)
)


@dataclass(frozen=True)
class ConfigError(Exception):
    """A configuration that cannot run; `problems` is one line per bad key."""

    problems: tuple[str, ...]

    def __str__(self) -> str:
        return "invalid configuration: " + "; ".join(self.problems)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Pick our keys out of the environment.

    Unknown `FORWARDER_*` variables are ignored, not rejected: Kubernetes injects
    `<SERVICE>_PORT`-style variables for every Service in the namespace, and a
    Service named `forwarder` would otherwise crash-loop the pods.
    """
    return {
        name: environ[env_name(name)] for name in Settings.model_fields if env_name(name) in environ
    }


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError((f"config file {path}: {exc.strerror or exc}",)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError((f"config file {path}: {exc}",)) from exc
    return data


def load_settings(
    environ: Mapping[str, str],
    cli: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge the three sources and validate; raise ConfigError naming every bad key."""
    cli = {key: value for key, value in (cli or {}).items() if value is not None}
    path = config_file or (Path(environ[CONFIG_FILE_ENV]) if environ.get(CONFIG_FILE_ENV) else None)
    file_values = read_toml(path) if path else {}
    env_values = from_environ(environ)
    merged: dict[str, Any] = {**env_values, **file_values, **cli}
    origin = {
        **{key: env_name(key) for key in env_values},
        **{key: f"{key} (in {path})" for key in file_values},
        **{key: flag_name(key) for key in cli},
    }
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(tuple(_describe(error, origin) for error in exc.errors())) from None


def _describe(error: Any, origin: Mapping[str, str]) -> str:
    loc = error.get("loc") or ()
    key = str(loc[0]) if loc else ""
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not key:
        return message
    if error.get("type") == "extra_forbidden":
        return f"{origin.get(key, key)}: unknown setting"
    if error.get("type") == "missing":
        return f"{env_name(key)}: required (or `{key}` in the config file, or {flag_name(key)})"
    shown = origin.get(key, env_name(key))
    if key in SECRET_FIELDS:
        return f"{shown}: {message}"
    value = error.get("input")
    return (
        f"{shown}: {message} (got {value!r})"
        if isinstance(value, str | int | float)
        else (f"{shown}: {message}")
    )


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration for display: secrets replaced, paths as strings."""
    shown: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "********"
        elif isinstance(value, Path | Rate):
            value = str(value)
        shown[name] = value
    shown["dead_letter_topic"] = settings.dead_letter_topic
    return shown
