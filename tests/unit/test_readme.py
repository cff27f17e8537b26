"""The README is the front door: its configuration and metrics tables must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from forwarder.config import documented_env_names
from forwarder.ops.metrics import Metrics

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `(FORWARDER_[A-Z0-9_]+)` \|", README, re.MULTILINE))
    assert documented == documented_env_names()


def test_every_documented_metric_is_exported_and_vice_versa() -> None:
    documented = set(
        re.findall(r"^\| `(forwarder_[a-z_]+)(?:\{[^}]*\})?` \|", README, re.MULTILINE)
    )
    exposition = generate_latest(Metrics().registry).decode()
    suffix = {"counter": "_total", "info": "_info"}
    exported = {
        family.name + suffix.get(family.type, "")
        for family in text_string_to_metric_families(exposition)
        if family.name.startswith("forwarder_")
    }
    assert documented == exported
