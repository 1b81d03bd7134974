"""The spend ledger: an append-only journal, then DuckDB, written off the event loop.

Every finished call is appended to `<db>.journal` (one JSON line, page-cache write,
no fsync) before it is handed to a writer thread that inserts batches into DuckDB.
The writer opens the database only for the length of a batch, so reports can open
it read-only in between; while it cannot write (locked, read-only, full, corrupt)
rows stay in the journal and in memory and are retried with backoff, and the gateway
keeps serving or refuses calls as the policy's `on_ledger_error` says (fail-open
`keep_serving` by default: spend is still enforced from memory). At start, journal
lines missing from the database are inserted, so a `kill -9` loses no finished call.
"""

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from . import schema
from .errors import LedgerError

logger = logging.getLogger(__name__)

Row = dict[str, Any]
BUDGET_FIELDS = (
    "id", "ts", "user_id", "team", "key_alias", "key_fingerprint", "tags",
    "model", "price_model", "cost_usd",
)
JOURNAL_ROTATE_BYTES = 4 * 1024 * 1024


class Ledger:
    """Owns the journal file and the writer thread for one DuckDB file."""

    def __init__(
        self,
        path: Path,
        *,
        batch_rows: int = 500,
        flush_interval_s: float = 0.25,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.path = path
        self.journal_path = Path(f"{path}.journal")
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.on_state = on_state
        self.healthy = True
        self.write_errors = 0
        self.rows_written = 0
        self._queue: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self._appended = 0
        self._committed = 0
        self._journal_fd: int | None = None
        self._journal_failed = False
        self._thread: threading.Thread | None = None
        self._last_error = ""

    @property
    def backlog(self) -> int:
        """Rows handed over but not yet in DuckDB."""
        return self._appended - self._committed

    def start(self) -> list[Row]:
        """Create the schema, replay the journal, start the writer; returns replayed rows."""
        replayed = self._read_journal()
        self._open_journal()
        try:
            with self._connect() as con:
                for statement in schema.create_statements():
                    con.execute(statement)
                if replayed:
                    con.execute(schema.insert_statement(), _columns(replayed))
            if replayed:
                logger.info("ledger: %d journal rows recovered into %s", len(replayed), self.path)
                self._truncate_journal()
        except (duckdb.Error, OSError) as e:
            self._set_health(False, f"{type(e).__name__}: {e}")
            for row in replayed:
                self._enqueue(row)
        self._thread = threading.Thread(target=self._run, name="tollgate-ledger", daemon=True)
        self._thread.start()
        return replayed

    def append(self, row: Row) -> None:
        """Journal the row, then queue it for DuckDB. Called on the event loop."""
        self._journal(row)
        self._enqueue(row)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush every queued row and stop the writer."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error("ledger: %d rows not written at shutdown; kept in %s",
                         self.backlog, self.journal_path)
        elif self.backlog == 0:
            self._truncate_journal()
        self._thread = None
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until every handed-over row is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.backlog == 0

    def rows_since(self, since: datetime) -> list[Row]:
        """Rows with cost from `since` on, from DuckDB plus journal rows not yet in it."""
        sql = (
            f"SELECT {', '.join(BUDGET_FIELDS)} FROM requests"
            " WHERE ts >= ? AND cost_usd > 0"
        )
        found = [dict(zip(BUDGET_FIELDS, r, strict=True)) for r in read_rows(self.path, sql, [since])]
        seen = {row["id"] for row in found}
        for row in self._read_journal():
            if row["id"] in seen or not row.get("cost_usd"):
                continue
            try:
                row["ts"] = datetime.fromisoformat(str(row["ts"]))
            except ValueError:
                continue
            if row["ts"] >= since:
                found.append(row)
        return found

    # the journal, on the event loop

    def _open_journal(self) -> None:
        try:
            self._journal_fd = os.open(
                self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
        except OSError as e:
            self._journal_failed = True
            logger.error("ledger: cannot open journal %s (%s); a crash would lose"
                         " unwritten rows", self.journal_path, e.strerror)

    def _journal(self, row: Row) -> None:
        fd = self._journal_fd
        if fd is None:
            return
        if self._appended == self._committed and self._appended:
            self._rotate_if_large(fd)
        try:
            os.write(fd, (json.dumps(row, default=str) + "\n").encode())
        except OSError as e:
            if not self._journal_failed:
                logger.error("ledger: journal write failed (%s); rows kept in memory only",
                             e.strerror)
            self._journal_failed = True
            return
        self._journal_failed = False

    def _rotate_if_large(self, fd: int) -> None:
        try:
            if os.fstat(fd).st_size > JOURNAL_ROTATE_BYTES:
                os.ftruncate(fd, 0)
        except OSError:
            pass

    def _truncate_journal(self) -> None:
        try:
            if self._journal_fd is not None:
                os.ftruncate(self._journal_fd, 0)
            elif self.journal_path.exists():
                self.journal_path.write_bytes(b"")
        except OSError as e:
            logger.warning("ledger: cannot truncate %s: %s", self.journal_path, e.strerror)

    def _read_journal(self) -> list[Row]:
        try:
            lines = self.journal_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LedgerError(f"{self.journal_path}: cannot read: {e.strerror}") from None
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                logger.warning("ledger: skipped a torn journal line in %s", self.journal_path)
                continue
            if isinstance(row, dict) and "id" in row:
                rows.append(row)
        return rows

    # the writer thread

    def _enqueue(self, row: Row) -> None:
        self._appended += 1
        self._queue.put(row)

    def _run(self) -> None:
        stopping = False
        batch: list[Row] = []
        backoff = 0.1
        while True:
            stopping = self._fill(batch, stopping)
            if batch:
                if self._write(batch):
                    self._committed += len(batch)
                    batch = []
                    backoff = 0.1
                else:
                    if stopping and backoff > 2:
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            if stopping:
                return

    def _fill(self, batch: list[Row], stopping: bool) -> bool:
        """Top up `batch` from the queue; True once the stop marker was seen."""
        timeout = 0.0 if batch or stopping else self.flush_interval_s
        deadline = time.monotonic() + self.flush_interval_s
        while len(batch) < self.batch_rows:
            try:
                item = self._queue.get(timeout=max(timeout, 0.0))
            except queue.Empty:
                if batch or stopping or time.monotonic() >= deadline:
                    break
                timeout = self.flush_interval_s
                continue
            if item is None:
                return True
            batch.append(item)
            timeout = max(deadline - time.monotonic(), 0.0)
        return stopping

    def _write(self, batch: list[Row]) -> bool:
        try:
            with self._connect() as con:
                con.execute(schema.insert_statement(), _columns(batch))
        except (duckdb.Error, OSError) as e:
            self.write_errors += 1
            self._set_health(False, f"{type(e).__name__}: {e}")
            return False
        self.rows_written += len(batch)
        self._set_health(True, "")
        return True

    def _connect(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.path))

    def _set_health(self, healthy: bool, reason: str) -> None:
        if healthy == self.healthy and (healthy or reason == self._last_error):
            return
        if not healthy and self.healthy:
            logger.error(
                "ledger: cannot write %s (%s); rows are kept in %s and memory and"
                " retried", self.path, reason.splitlines()[0], self.journal_path
            )
        elif healthy:
            logger.warning("ledger: %s writable again; backlog flushed", self.path)
        self.healthy = healthy
        self._last_error = reason
        if self.on_state is not None:
            self.on_state(healthy, reason)


def _columns(rows: Iterable[Row]) -> list[list[Any]]:
    rows = list(rows)
    return [[row.get(name) for row in rows] for name in schema.NAMES]


def read_rows(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run a read-only query, waiting out the writer's short batch locks."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                return con.execute(sql, params or []).fetchall()
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise LedgerError(f"{path}: {e}") from None
            time.sleep(0.02)
