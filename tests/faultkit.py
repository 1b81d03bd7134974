"""Faults for the hardening tests, made on this project's own files and processes.

A second process that holds the DuckDB file, a small file system that fills up or
turns read-only (needs root: a tmpfs mounted on a test directory), ledger rows.
"""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

HOLD_SCRIPT = """
import sys, time, duckdb
deadline = time.monotonic() + 20
while True:
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.01)
print("held", flush=True)
sys.stdin.read()
con.close()
"""


class FileHolder:
    """Another process holding the DuckDB file open read-write (so it is locked)."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRIPT, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"held":
            self.release()
            raise RuntimeError(f"could not hold {db}: {line!r}")

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def held(db: Path) -> Iterator[FileHolder]:
    holder = FileHolder(db)
    try:
        yield holder
    finally:
        holder.release()


class SmallDisk:
    """A tmpfs of a few MiB on a test directory, to fill up or remount read-only."""

    def __init__(self, where: Path, size_mib: int = 4) -> None:
        self.path = where
        where.mkdir(parents=True, exist_ok=True)
        self.filler = where / "filler"
        self._run(
            "mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)
        )

    def fill(self) -> None:
        """Write zeros until the file system says it is full."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 16, 1 << 12, 512, 1):
                block = b"\0" * size
                try:
                    while True:
                        os.write(fd, block)
                except OSError:
                    continue
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, flag: bool) -> None:
        """Remount read-only or back; read-only fails while a file is open to write."""
        mode = "remount,ro" if flag else "remount,rw"
        self._run("mount", "-o", mode, str(self.path))

    def unmount(self) -> None:
        self._run("umount", "-l", str(self.path))

    @staticmethod
    def _run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=20)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tiny file system for disk-full and read-only faults (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        disk = SmallDisk(tmp_path / "disk")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield disk
    finally:
        disk.unmount()


def make_row(cost: str = "0.001", **fields: Any) -> dict[str, Any]:
    """A ledger row as the gateway writes it (only the columns tests look at)."""
    return {
        "id": uuid.uuid4().hex,
        "ts": datetime.now(UTC).isoformat(),
        "provider": "anthropic",
        "endpoint": "messages",
        "model": "claude-sonnet-4-5",
        "price_model": "claude-sonnet-4-5",
        "user_id": "bob",
        "tags": [],
        "status": 200,
        "outcome": "ok",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": cost,
        "latency_ms": 5,
        **fields,
    }


def wait_for(check: Any, timeout_s: float = 10.0, every_s: float = 0.05) -> bool:
    """Poll `check()` until it is true or the time is up; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return bool(check())
        time.sleep(every_s)
