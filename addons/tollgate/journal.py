"""The ledger's journal: one JSON line per finished call, in `<db>.journal`.

A line is written with a single `os.write` before the call is acknowledged, so a
crash of the gateway process loses no finished call (a power cut may: no fsync).
The file is locked while a gateway uses it, so two gateways never share a ledger.
Reading skips torn lines. No DuckDB here; `ledger.py` decides when to truncate.
"""

import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import LedgerError

logger = logging.getLogger(__name__)

Row = dict[str, Any]
REOPEN_INTERVAL_S = 1.0


class Journal:
    """Appends rows on the event loop; reports when it cannot (`on_state`)."""

    def __init__(self, path: Path, on_state: Callable[[bool, str], None]) -> None:
        self.path = path
        self.on_state = on_state
        self.ok = True
        self._fd: int | None = None
        self._next_open = 0.0
        self._read_failed = False

    def open(self) -> None:
        """Open and lock the file; LedgerError if another process holds it."""
        if not self._reopen():
            return
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise LedgerError(
                f"{self.path}: another process holds this journal, so another gateway"
                " uses the same ledger - give each gateway its own budget_db"
            ) from None
        except OSError:
            pass  # a file system without locks: run one gateway per ledger

    def append(self, row: Row) -> None:
        """Write one line; on failure report it once and keep trying on later rows."""
        if self._fd is None and not self._reopen():
            return
        assert self._fd is not None
        line = (json.dumps(row, default=str) + "\n").encode()
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write (no space left on device?)")
        except OSError as e:
            self._state(False, e.strerror or str(e))
            return
        self._state(True, "")

    def truncate(self) -> None:
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
            elif self.path.exists():
                self.path.write_bytes(b"")
        except OSError as e:
            logger.warning("ledger: cannot truncate %s: %s", self.path, e.strerror)

    def size(self) -> int:
        try:
            return os.fstat(self._fd).st_size if self._fd is not None else 0
        except OSError:
            return 0

    def read(self) -> list[Row]:
        """Every whole row in the file; torn or foreign lines are skipped.

        A journal that cannot be read counts as empty, once logged: the rows it
        holds reach DuckDB when it can be read again at a later start.
        """
        try:
            if not stat.S_ISREG(self.path.stat().st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            if not self._read_failed:
                logger.error(
                    "ledger: cannot read the journal %s (%s); rows it holds"
                    " are not counted",
                    self.path,
                    e.strerror or e,
                )
            self._read_failed = True
            return []
        rows = []
        skipped = 0
        for line in lines:
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                skipped += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows.append(row)
            else:
                skipped += 1
        if skipped:
            logger.warning(
                "ledger: skipped %d unreadable lines in %s", skipped, self.path
            )
        return rows

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def _reopen(self) -> bool:
        now = time.monotonic()
        if now < self._next_open:
            return False
        self._next_open = now + REOPEN_INTERVAL_S
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            self._state(False, f"cannot open: {e.strerror or e}")
            return False
        return True

    def _state(self, ok: bool, reason: str) -> None:
        if ok == self.ok:
            return
        self.ok = ok
        self.on_state(ok, reason)
