"""Gateways for end-to-end tests: one per test module and mode, on loopback."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import FakeProvider, Gateway


@pytest.fixture(scope="module")
def reverse_gateway(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("reverse"), fake, mode="reverse")
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def forward_gateway(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path_factory.mktemp("forward"), fake, mode="forward")
    yield gateway
    gateway.close()


@pytest.fixture(params=["reverse", "forward"])
def gateway(request: pytest.FixtureRequest) -> Gateway:
    found: Gateway = request.getfixturevalue(f"{request.param}_gateway")
    return found


def usage_header(**counts: int) -> dict[str, str]:
    spec = ",".join(f"{name}={value}" for name, value in counts.items())
    return {"x-fake-usage": spec}


def tmp_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
