"""Fixtures for the deployment tests; helpers live in deploytools.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.deploytools import OVERLAYS, render


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: builds and installs the wheel into a fresh virtualenv (about a minute)"
    )


@pytest.fixture(params=sorted(OVERLAYS), ids=str)
def overlay(request: pytest.FixtureRequest) -> str:
    """Name of each overlay in turn (deploy/kubernetes/overlays/* and test fixtures)."""
    name: str = request.param
    return name


@pytest.fixture
def objects(overlay: str) -> list[dict[str, Any]]:
    """The overlay rendered by `kubectl kustomize`, one dict per object."""
    return render(OVERLAYS[overlay])
