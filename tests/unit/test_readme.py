"""The reference tables in docs/ must match the code: every setting a user can set is in
docs/configuration.md, and the metrics table in docs/operations.md is what the registry
exports, no more and no less."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from forwarder.config import documented_env_names
from forwarder.ops.metrics import Metrics

DOCS = Path(__file__).parents[2] / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text(encoding="utf-8")
OPERATIONS = (DOCS / "operations.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `(FORWARDER_[A-Z0-9_]+)` \|", CONFIGURATION, re.MULTILINE))
    assert documented == documented_env_names()


def test_every_documented_metric_is_exported_and_vice_versa() -> None:
    documented = set(
        re.findall(r"^\| `(forwarder_[a-z_]+)(?:\{[^}]*\})?` \|", OPERATIONS, re.MULTILINE)
    )
    exposition = generate_latest(Metrics().registry).decode()
    suffix = {"counter": "_total", "info": "_info"}
    exported = {
        family.name + suffix.get(family.type, "")
        for family in text_string_to_metric_families(exposition)
        if family.name.startswith("forwarder_")
    }
    assert documented == exported
