"""Shared fixtures: fixture payloads and real processes on loopback."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "addons"))
sys.path.insert(0, str(ROOT / "tests"))

from harness import FakeProvider  # noqa: E402

pytest_plugins = ["faultkit"]  # its fixtures (small_disk) for every test module

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    yield provider
    provider.close()
