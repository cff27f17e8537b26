"""The settings of a forwarder run against the sandbox: the demo's, the tests' and the benchmark's.

They are FORWARDER_* variables, as an operator would write them, so that the same
dictionary configures a forwarder in this process (`load_settings(env)`) and one in a
child process (its environment).
"""

from __future__ import annotations

from forwarder.sandbox.legiti import TOKEN

SESSION_TIMEOUT_MS = 2_000
"""The sandbox broker completes a group join only after half the session timeout, so a
short one lets a forwarder start consuming within a second (the default takes five)."""

HEARTBEAT_INTERVAL_MS = 500
"""Well inside the short session timeout, so a member is not evicted between heartbeats."""


def sandbox_env(
    bootstrap: str, topics: str, legiti_url: str, **overrides: str | int | float
) -> dict[str, str]:
    """FORWARDER_* variables for a forwarder between the sandbox broker and a Legiti
    stand-in: fast group joins, frequent commits and short retry backoffs, so that
    what a test or the demo waits for happens in fractions of a second.

    `topics` is comma-separated, as FORWARDER_KAFKA_TOPICS; the consumer group is named
    after it. Keyword overrides are variable names without the prefix, in lower case
    (`max_in_flight=8` for FORWARDER_MAX_IN_FLIGHT): the names are the public contract.
    """
    settings: dict[str, str | int | float] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topics": topics,
        "kafka_group_id": f"group-{topics}",
        "kafka_session_timeout_ms": SESSION_TIMEOUT_MS,
        "kafka_heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        "legiti_base_url": legiti_url,
        "legiti_api_token": TOKEN,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "commit_interval_seconds": 0.2,
        "retry_initial_backoff_seconds": 0.05,
        "retry_max_backoff_seconds": 0.5,
        **overrides,
    }
    return {f"FORWARDER_{name.upper()}": str(value) for name, value in settings.items()}
