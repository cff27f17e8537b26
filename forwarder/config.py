"""Configuration: defaults ← `FORWARDER_*` environment ← TOML file ← CLI flags.

Settings come in sections (kafka, sink, limits, retry, dedupe, decode, shared, ops), each a
model validated once with its defaults written once, so that a part of the program
takes only the section it uses and a command that never talks to Legiti (reading
dead letters, say) never has to supply a Legiti URL. The names an operator uses
stay flat: every field carries its public name as its alias (`kafka_bootstrap_servers`
is `FORWARDER_KAFKA_BOOTSTRAP_SERVERS`, the TOML key `kafka_bootstrap_servers` and the
flag `--kafka-bootstrap-servers`), and those names are a contract.

The merge is done here rather than by a settings framework so that every error
can name the key the way the operator wrote it, which is what a person reading a
crash-looping pod's last log line needs. Validation itself is pydantic.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from forwarder.limits.rate import Rate, parse_rate
from forwarder.shared.connection import URL_KEY, redis_target

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


class Section(BaseModel):
    """A group of settings; each field's alias is its public (flat) name."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, arbitrary_types_allowed=True
    )


class KafkaSettings(Section):
    """The source topics, the group, the connection and the dead-letter topic."""

    bootstrap_servers: str = Field(
        alias="kafka_bootstrap_servers", min_length=1, description="host:port[,host:port]"
    )
    topics: CsvList = Field(
        alias="kafka_topics", min_length=1, description="comma-separated source topics"
    )
    group_id: str = Field(
        "legiti-forwarder",
        alias="kafka_group_id",
        min_length=1,
        description="consumer group; replicas sharing it split the partitions",
    )
    client_id: str = Field(
        "legiti-forwarder",
        alias="kafka_client_id",
        min_length=1,
        description="client id reported to the brokers (the version is appended)",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        alias="kafka_auto_offset_reset",
        description="where a new group starts: earliest (nothing skipped) or latest",
    )
    max_poll_records: int = Field(
        500,
        alias="kafka_max_poll_records",
        ge=1,
        le=100_000,
        description="records fetched per poll at most",
    )
    session_timeout_ms: int = Field(
        10_000, alias="kafka_session_timeout_ms", ge=1_000, description="group session timeout"
    )
    heartbeat_interval_ms: int = Field(
        3_000, alias="kafka_heartbeat_interval_ms", ge=100, description="group heartbeat interval"
    )
    fetch_max_wait_ms: int = Field(
        500,
        alias="kafka_fetch_max_wait_ms",
        ge=0,
        le=30_000,
        description="longest the broker holds a fetch that has no records",
    )
    max_poll_interval_ms: int = Field(
        300_000,
        alias="kafka_max_poll_interval_ms",
        ge=1_000,
        description="longest gap between polls before the group evicts a member",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        alias="kafka_security_protocol",
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", alias="kafka_sasl_mechanism", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    sasl_username: OptionalStr = Field(
        None, alias="kafka_sasl_username", description="SASL user name"
    )
    sasl_password: OptionalSecret = Field(
        None, alias="kafka_sasl_password", description="SASL password (secret)"
    )
    sasl_password_file: OptionalPath = Field(
        None,
        alias="kafka_sasl_password_file",
        description="file holding the SASL password (a mounted Secret)",
    )
    ssl_cafile: OptionalPath = Field(
        None,
        alias="kafka_ssl_cafile",
        description="CA bundle that signed the brokers' certificates",
    )
    ssl_certfile: OptionalPath = Field(
        None, alias="kafka_ssl_certfile", description="client certificate (mutual TLS)"
    )
    ssl_keyfile: OptionalPath = Field(
        None, alias="kafka_ssl_keyfile", description="client private key (mutual TLS)"
    )
    ssl_key_password: OptionalSecret = Field(
        None, alias="kafka_ssl_key_password", description="password of the client key (secret)"
    )
    ssl_check_hostname: bool = Field(
        True,
        alias="kafka_ssl_check_hostname",
        description="verify the brokers' host names against their certificates",
    )
    dlq_topic: OptionalStr = Field(
        None,
        alias="dlq_topic",
        description="dead-letter topic; default: the first source topic + .dlq",
    )
    retry_topic: OptionalStr = Field(
        None,
        alias="retry_topic",
        description="topic the forwarder parks what cannot finish in, and reads back;"
        " default: the first source topic + .retry",
    )
    max_buffered_events: int = Field(
        10_000,
        alias="max_buffered_events",
        ge=1,
        description="records consumed and unfinished before fetching pauses",
    )
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024,
        alias="max_buffered_bytes",
        ge=1024,
        description="bytes of records (values and keys) consumed and unfinished before"
        " fetching pauses",
    )
    commit_interval_seconds: float = Field(
        1.0,
        alias="commit_interval_seconds",
        gt=0,
        le=60,
        description="how often the finished prefix is committed",
    )

    @model_validator(mode="after")
    def _sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not self.sasl_username:
            raise ValueError("kafka_sasl_username is required with a SASL security protocol")
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set at most one of kafka_sasl_password and kafka_sasl_password_file")
        own = {"retry_topic": self.retry_topic_name, "dlq_topic": self.dead_letter_topic}
        for name, topic in own.items():
            if topic in self.topics:
                sources = env_name("kafka_topics")
                raise ValueError(f"{env_name(name)}: {topic!r} is also a source topic ({sources})")
        if self.retry_topic_name == self.dead_letter_topic:
            raise ValueError(
                f"{env_name('retry_topic')}: the same topic as {env_name('dlq_topic')}"
                f" ({self.dead_letter_topic!r})"
            )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topics[0]}.dlq"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def retry_topic_name(self) -> str:
        return self.retry_topic or f"{self.topics[0]}.retry"


class SinkCommon(Section):
    """What every sink needs: how long one call may take and how many may be under way."""

    http_timeout_seconds: float = Field(
        10.0,
        alias="http_timeout_seconds",
        gt=0,
        le=600,
        description="time limit for one request to the sink",
    )
    max_in_flight: int = Field(
        64, alias="max_in_flight", ge=1, le=4096, description="requests under way at once"
    )


class LegitiSinkSettings(SinkCommon):
    """Legiti's `track_auth` REST API, called directly."""

    kind: Literal["legiti"] = Field(
        "legiti",
        alias="sink",
        description="where events go: legiti (the REST API) or mcp (Legiti's MCP tools)",
    )
    base_url: str = Field(
        alias="legiti_base_url", pattern=r"^https?://[^\s/]+", description="http(s)://host[:port]"
    )
    api_token: OptionalSecret = Field(
        None, alias="legiti_api_token", description="Legiti API token (secret)"
    )
    api_token_file: OptionalPath = Field(
        None,
        alias="legiti_api_token_file",
        description="file holding the token, re-read when it changes",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_token(self) -> LegitiSinkSettings:
        if (self.api_token is None) == (self.api_token_file is None):
            raise ValueError(
                "set exactly one of legiti_api_token and legiti_api_token_file"
                " (FORWARDER_LEGITI_API_TOKEN / FORWARDER_LEGITI_API_TOKEN_FILE)"
            )
        return self


class McpSinkSettings(SinkCommon):
    """Legiti's MCP tools, called over MCP's Streamable HTTP transport (through a gateway)."""

    kind: Literal["mcp"] = Field("mcp", alias="sink")
    url: str = Field(
        alias="mcp_url",
        pattern=r"^https?://[^\s/]+",
        description="the MCP endpoint, e.g. https://gateway.example.com/mcp/<server-id>/",
    )
    token: OptionalSecret = Field(
        None, alias="mcp_token", description="grant token for the gateway (secret)"
    )
    token_file: OptionalPath = Field(
        None,
        alias="mcp_token_file",
        description="file holding the grant token, re-read when it changes",
    )
    login_tool: str = Field(
        "track_login", alias="mcp_login_tool", min_length=1, description="tool for logins"
    )
    logout_tool: str = Field(
        "track_logout", alias="mcp_logout_tool", min_length=1, description="tool for logouts"
    )

    @model_validator(mode="after")
    def _at_most_one_token(self) -> McpSinkSettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError(
                "set at most one of mcp_token and mcp_token_file"
                " (FORWARDER_MCP_TOKEN / FORWARDER_MCP_TOKEN_FILE)"
            )
        return self


def _sink_tag(value: Any) -> str:
    """Which sink a section is: its `sink` name, given or defaulted."""
    if isinstance(value, dict):
        return str(value.get("sink", value.get("kind", "legiti")))
    return str(getattr(value, "kind", "legiti"))


SinkSettings = Annotated[
    Annotated[LegitiSinkSettings, Tag("legiti")] | Annotated[McpSinkSettings, Tag("mcp")],
    Discriminator(_sink_tag),
]
SINK_KINDS: dict[str, type[SinkCommon]] = {"legiti": LegitiSinkSettings, "mcp": McpSinkSettings}


class LimitSettings(Section):
    rate_limit: OptionalRate = Field(
        None, alias="rate_limit", description="limit on all calls, e.g. 1000/hour"
    )
    rate_limit_login: OptionalRate = Field(
        None, alias="rate_limit_login", description="limit on track_login calls, e.g. 30/minute"
    )
    rate_limit_logout: OptionalRate = Field(
        None, alias="rate_limit_logout", description="limit on track_logout calls, e.g. 5/second"
    )
    policy_file: OptionalPath = Field(
        None, alias="policy_file", description="gateway policy JSON: denied tools and their limits"
    )


class RetrySettings(Section):
    """When a failed send is tried again, when it is given up, when all sends pause."""

    max_elapsed_seconds: float = Field(
        900.0, alias="retry_max_elapsed_seconds", ge=0, description="0 retries forever"
    )
    initial_backoff_seconds: float = Field(
        0.5,
        alias="retry_initial_backoff_seconds",
        gt=0,
        description="ceiling of the first retry's jittered wait",
    )
    max_backoff_seconds: float = Field(
        60.0,
        alias="retry_max_backoff_seconds",
        gt=0,
        description="ceiling of any retry's jittered wait",
    )
    circuit_failure_ratio: float = Field(
        0.5,
        alias="circuit_failure_ratio",
        gt=0,
        le=1,
        description="share of failed sends that opens the circuit",
    )
    circuit_min_requests: int = Field(
        20,
        alias="circuit_min_requests",
        ge=1,
        description="sends in the window before the circuit may open",
    )
    circuit_window_seconds: float = Field(
        30.0,
        alias="circuit_window_seconds",
        gt=0,
        description="window over which failures are counted",
    )
    circuit_max_open_seconds: float = Field(
        60.0,
        alias="circuit_max_open_seconds",
        gt=0,
        description="longest pause between probes while open",
    )
    park_after_seconds: float = Field(
        120.0,
        alias="park_after_seconds",
        gt=0,
        description="how long an event may keep failing before its user's pending events"
        " are parked in the retry topic",
    )

    @model_validator(mode="after")
    def _order(self) -> RetrySettings:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("retry_max_backoff_seconds is below retry_initial_backoff_seconds")
        return self


class DedupeSettings(Section):
    ttl_seconds: float = Field(
        3600.0,
        alias="dedupe_ttl_seconds",
        ge=0,
        description="how long a delivered key suppresses copies",
    )
    max_entries: int = Field(
        1_000_000,
        alias="dedupe_max_entries",
        ge=0,
        description="delivered keys remembered at most (oldest evicted)",
    )


class SharedSettings(Section):
    """The Redis the replicas of one consumer group share limits and de-duplication in."""

    redis_url: OptionalSecret = Field(
        None,
        alias="redis_url",
        description="redis:// or rediss:// URL of the group's Redis; unset: no shared state",
    )
    redis_password_file: OptionalPath = Field(
        None,
        alias="redis_password_file",
        description="file holding the Redis password (a mounted Secret)",
    )

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # Checked here so that a bad URL stops the program at start-up, naming the key.
            try:
                redis_target(value.get_secret_value(), "check")
            except ValueError as exc:
                raise ValueError(str(exc).removeprefix(f"{URL_KEY} ").removeprefix(": ")) from None
        return value

    @model_validator(mode="after")
    def _file_needs_url(self) -> SharedSettings:
        if self.redis_password_file is not None and self.redis_url is None:
            raise ValueError("redis_password_file is set but redis_url is not")
        return self


class DecodeSettings(Section):
    """The CloudEvents `type` suffixes that decide the action."""

    login_success_suffix: str = Field(
        "login.succeeded",
        alias="cloudevents_login_success_suffix",
        min_length=1,
        description="CloudEvents type suffix meaning login_success",
    )
    login_failure_suffix: str = Field(
        "login.failed",
        alias="cloudevents_login_failure_suffix",
        min_length=1,
        description="CloudEvents type suffix meaning login_failure",
    )
    logout_suffix: str = Field(
        "logout",
        alias="cloudevents_logout_suffix",
        min_length=1,
        description="CloudEvents type suffix meaning logout",
    )


class OpsSettings(Section):
    shutdown_timeout_seconds: float = Field(
        20.0,
        alias="shutdown_timeout_seconds",
        ge=0,
        description="how long SIGTERM waits for sends under way",
    )
    topic_check_interval_seconds: float = Field(
        30.0,
        alias="topic_check_interval_seconds",
        gt=0,
        le=3600,
        description="how often the dead-letter and retry topics are checked to exist",
    )
    metrics_host: str = Field(
        "0.0.0.0",
        alias="metrics_host",
        description="address of the /metrics, /healthz, /readyz server",
    )
    metrics_port: int = Field(
        9102,
        alias="metrics_port",
        ge=0,
        le=65535,
        description="port of the /metrics, /healthz, /readyz server (0: any free one)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", alias="log_level", description="DEBUG, INFO, WARNING or ERROR"
    )
    log_format: Literal["json", "console"] = Field(
        "json", alias="log_format", description="json (one object per line) or console"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class KafkaToolSettings(BaseModel):
    """What a command that only reads or writes Kafka needs (dead letters, group status)."""

    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings
    ops: OpsSettings


class Settings(KafkaToolSettings):
    """Everything `forwarder run` needs."""

    sink: SinkSettings
    limits: LimitSettings
    retry: RetrySettings
    dedupe: DedupeSettings
    decode: DecodeSettings
    shared: SharedSettings


SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "limits": LimitSettings,
    "retry": RetrySettings,
    "dedupe": DedupeSettings,
    "decode": DecodeSettings,
    "shared": SharedSettings,
    "ops": OpsSettings,
}
M = TypeVar("M", bound=KafkaToolSettings)


def _public_fields(model: type[Section]) -> Iterator[tuple[str, FieldInfo]]:
    for field in model.model_fields.values():
        assert field.alias is not None  # every Section field is declared with its public name
        yield field.alias, field


def public_fields() -> dict[str, FieldInfo]:
    """Every setting an operator can give, by its public name (all sinks' included)."""
    fields: dict[str, FieldInfo] = {}
    for section in (*SECTIONS.values(), *SINK_KINDS.values()):
        fields.update(_public_fields(section))
    return fields


def documented_env_names() -> set[str]:
    return {env_name(name) for name in public_fields()}


SECRET_FIELDS = frozenset(
    name for name, field in public_fields().items() if "Secret" in str(field.annotation)
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
    return {name: environ[env_name(name)] for name in public_fields() if env_name(name) in environ}


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
    """Everything `forwarder run` needs; raise ConfigError naming every bad key."""
    return load(Settings, environ, cli, config_file)


def load(
    model: type[M],
    environ: Mapping[str, str],
    cli: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
) -> M:
    """Merge the three sources into `model`'s sections and validate; raise ConfigError
    naming every bad key. Settings of sections `model` does not have are ignored."""
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
    known = public_fields()
    problems = [f"{origin[key]}: unknown setting" for key in merged if key not in known]
    sections: dict[str, dict[str, Any]] = {}
    for name in model.model_fields:
        section = _sink_kind(merged, problems) if name == "sink" else SECTIONS[name]
        sections[name] = {
            alias: merged[alias] for alias, _ in _public_fields(section) if alias in merged
        }
    try:
        settings = model.model_validate(sections)
    except ValidationError as exc:
        problems += (_describe(error, origin) for error in exc.errors())
    if problems:
        raise ConfigError(tuple(problems))
    return settings


def _sink_kind(merged: dict[str, Any], problems: list[str]) -> type[Section]:
    """The sink section named by `sink`; an unknown name is one problem, not two (it is
    dropped, so the default sink's own checks do not complain about it again)."""
    kind = str(merged.get("sink", "legiti"))
    if kind not in SINK_KINDS:
        problems.append(f"{env_name('sink')}: one of {', '.join(SINK_KINDS)} (got {kind!r})")
        del merged["sink"]
        return LegitiSinkSettings
    return SINK_KINDS[kind]


def _describe(error: Any, origin: Mapping[str, str]) -> str:
    loc = [part for part in error.get("loc") or () if isinstance(part, str)]
    key = loc[-1] if len(loc) > 1 else ""
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not key:
        return message
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


def masked(settings: BaseModel) -> dict[str, Any]:
    """The effective configuration for display, by section and public name: secrets
    replaced, paths and rates as strings."""
    shown: dict[str, Any] = {}
    for name in type(settings).model_fields:
        section = getattr(settings, name)
        values: dict[str, Any] = {}
        for field_name, field in type(section).model_fields.items():
            value = getattr(section, field_name)
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, Path | Rate):
                value = str(value)
            values[field.alias or field_name] = value
        for computed in type(section).model_computed_fields:
            values[computed] = getattr(section, computed)
        shown[name] = values
    return shown
