"""The spend ledger: an append-only journal, then DuckDB, written off the event loop.

Every finished call is appended to `<db>.journal` (one JSON line, page-cache write,
no fsync) before it is handed to a writer thread that inserts batches into DuckDB.
The writer opens the database only for the length of a batch, so reports can open
it read-only in between; while it cannot write (locked, read-only, full, corrupt)
rows stay in the journal and in memory and are retried with backoff, and the gateway
keeps serving or refuses calls as the policy's `on_ledger_error` says (fail-open
`keep_serving` by default: spend is still enforced from memory). At start, journal
lines missing from the database are inserted, so a `kill -9` loses no finished call.
A row DuckDB refuses (a bad value) is set aside in `<db>.rejected`, never retried
forever in front of the others.
"""

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import duckdb

from . import schema
from .errors import LedgerError
from .journal import Journal
from .rowcheck import fit_row

logger = logging.getLogger(__name__)

Row = dict[str, Any]
# Who spent, on what: the columns a budget needs to know which windows a cost is in.
CALLER_FIELDS = (
    "user_id",
    "team",
    "key_alias",
    "key_fingerprint",
    "tags",
    "model",
    "price_model",
)
# A sum of spend per caller, model and tags, within one stretch of time.
SUMMED_FIELDS = (*CALLER_FIELDS, "ts", "cost_usd")
BUDGET_FIELDS = ("id", *SUMMED_FIELDS)
STORED_IDS_SQL = "SELECT id FROM requests WHERE id IN (SELECT unnest(?::VARCHAR[]))"
JOURNAL_ROTATE_BYTES = 4 * 1024 * 1024
STOP_RETRY_S = 3.0
MAX_BACKOFF_S = 2.0  # retries while the file is down: cheap, and recovery is quick
LOCK_GRACE_S = 3.0  # how long a reader may hold the file before it counts as down
# Errors about a value, not the file: only the row holding it is set aside.
ROW_ERRORS = (duckdb.DataError, duckdb.InvalidInputException)
StateCallback = Callable[[str, bool, str], None]


class Ledger:
    """Owns the journal file and the writer thread for one DuckDB file."""

    def __init__(
        self,
        path: Path,
        *,
        batch_rows: int = 500,
        flush_interval_s: float = 1.0,
        on_state: StateCallback | None = None,
        lock_grace_s: float = LOCK_GRACE_S,
    ) -> None:
        self.path = path
        self.journal_path = Path(f"{path}.journal")
        self.rejected_path = Path(f"{path}.rejected")
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.on_state = on_state
        self.lock_grace_s = lock_grace_s
        self.db_ok = True
        self.write_errors = 0
        self.rows_written = 0
        self.rows_rejected = 0
        self.journal = Journal(self.journal_path, self._journal_state)
        self._queue: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self._appended = 0
        self._committed = 0
        self._pending: dict[str, Row] = {}  # handed over, not yet in DuckDB
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._schema_ready = False
        self._failing_since: float | None = None
        # The writer's batch and this process's reads never overlap: DuckDB refuses a
        # read-only connection to a file the same process has open read-write.
        self._lock = threading.Lock()

    @property
    def healthy(self) -> bool:
        """True while both the journal and DuckDB take writes."""
        return self.db_ok and self.journal.ok

    @property
    def failing(self) -> bool:
        """True while the last write failed, even if not yet reported as down."""
        return self._failing_since is not None

    @property
    def backlog(self) -> int:
        """Rows handed over but not yet in DuckDB."""
        return self._appended - self._committed

    def start(self) -> list[Row]:
        """Lock and replay the journal, start the writer; returns replayed rows.

        Raises LedgerError when another gateway already uses this ledger.
        """
        self.journal.open()
        replayed = self.journal.read()
        if self._write(replayed):
            if replayed:
                logger.info(
                    "ledger: %d journal rows replayed into %s, %d of them"
                    " missing from it",
                    len(replayed),
                    self.path,
                    self.rows_written,
                )
                self.journal.truncate()
        else:
            for row in replayed:
                self._enqueue(row)
        self._thread = threading.Thread(
            target=self._run, name="tollgate-ledger", daemon=True
        )
        self._thread.start()
        return replayed

    def append(self, row: Row) -> None:
        """Journal the row, then queue it for DuckDB. Called on the event loop."""
        idle = self._appended == self._committed
        if idle and self.journal.size() > JOURNAL_ROTATE_BYTES:
            self.journal.truncate()  # every line in it is in DuckDB
        self.journal.append(row)
        self._enqueue(row)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush every queued row and stop the writer."""
        if self._thread is None:
            return
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout_s)
        left = self.backlog
        if left == 0 and not self._thread.is_alive():
            self.journal.truncate()
        elif left:
            kept = "the journal keeps them for the next start"
            if not self.journal.ok:
                kept = "the journal failed too, so those it missed are lost"
            logger.error(
                "ledger: %d rows not written to %s at shutdown; %s",
                left,
                self.path,
                kept,
            )
        self._thread = None
        self.journal.close()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until every handed-over row is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.backlog == 0

    def rows_since(self, starts: Iterable[datetime], wait_s: float = 10.0) -> list[Row]:
        """Spend from the earliest of `starts` on: DuckDB's summed, then rows not in it.

        `starts` are the budgets' window starts. DuckDB's rows come summed per
        caller, model and tags within each stretch between one start and the next,
        with `ts` the stretch's start, so a window counts a sum whole or not at all
        and start-up reads a few thousand rows, not a month of calls. Rows in memory
        or only in the journal come one by one. Raises LedgerError when DuckDB
        cannot be read (`unstored_rows_since` still can).
        """
        starts = sorted(set(starts), reverse=True)
        if not starts:
            return []
        since = starts[-1]
        journal = self.journal.read()
        with self._lock:  # a batch is either in DuckDB or still pending, never neither
            summed: list[tuple[Any, ...]] = []
            stored_ids: set[str] = set()
            if self.path.exists():
                summed, stored = read_queries(
                    self.path,
                    [
                        (_summed_sql(len(starts)), [since, *starts]),
                        (STORED_IDS_SQL, [[row["id"] for row in journal]]),
                    ],
                    wait_s=wait_s,
                )
                stored_ids = {found[0] for found in stored}
            pending = list(self._pending.values())
        found = [dict(zip(SUMMED_FIELDS, r, strict=True)) for r in summed]
        seen = set(stored_ids)
        for row in _budget_rows(pending + journal, since):
            if row["id"] not in seen:
                seen.add(row["id"])
                found.append(row)
        return found

    def unstored_rows_since(self, since: datetime) -> list[Row]:
        """Rows DuckDB may not have: pending ones and the journal's (no DuckDB read)."""
        rows = list(self._pending.values()) + self.journal.read()
        return list({row["id"]: row for row in _budget_rows(rows, since)}.values())

    # the writer thread

    def _enqueue(self, row: Row) -> None:
        self._appended += 1
        self._pending[row["id"]] = row
        self._queue.put(row)

    def _run(self) -> None:
        batch: list[Row] = []
        backoff = 0.1
        give_up_at: float | None = None
        while True:
            self._fill(batch)
            stopping = self._stop.is_set()
            if stopping and give_up_at is None:
                give_up_at = time.monotonic() + STOP_RETRY_S
            if not batch and ((self.db_ok and not self.failing) or stopping):
                if stopping:
                    return
                continue
            # a batch to write, or a broken file to probe while idle
            if self._write(batch):
                self._committed += len(batch)
                batch = []
                backoff = 0.1
                continue
            if give_up_at is not None and time.monotonic() >= give_up_at:
                return  # the journal keeps the rest for the next start
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _fill(self, batch: list[Row]) -> None:
        """Top up `batch` from the queue for up to one flush interval."""
        deadline = time.monotonic() + self.flush_interval_s
        while len(batch) < self.batch_rows:
            wait = 0.0 if self._stop.is_set() else deadline - time.monotonic()
            try:
                item = self._queue.get(block=wait > 0, timeout=max(wait, 0.0))
            except queue.Empty:
                return
            if item is not None:  # None only wakes the thread up at close
                batch.append(item)

    def _write(self, batch: list[Row]) -> bool:
        """Insert a batch (an empty one checks the file); False while DuckDB fails."""
        try:
            with self._lock, self._connect() as con:
                if not self._schema_ready:
                    for statement in schema.create_statements():
                        con.execute(statement)
                    self._schema_ready = True
                written = self._insert(con, batch) if batch else 0
                for row in batch:
                    self._pending.pop(row["id"], None)
        except (duckdb.Error, OSError) as e:
            if batch:
                self.write_errors += 1
            self._schema_ready = False  # a replaced file needs its table again
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            # A report reading the file holds it for a moment: only wait then.
            brief = now - self._failing_since < self.lock_grace_s
            if not (brief and "Could not set lock" in str(e)):
                self._db_state(False, f"{type(e).__name__}: {e}")
            return False
        self._failing_since = None
        self.rows_written += written
        self._db_state(True, "")
        return True

    def _insert(self, con: duckdb.DuckDBPyConnection, batch: list[Row]) -> int:
        """Insert rows not in the table yet; how many were new."""
        try:
            return _inserted(con.execute(schema.insert_statement(), _params(batch)))
        except ROW_ERRORS:
            pass
        written = 0
        for row in batch:  # find the rows DuckDB refuses; the rest go in
            fitted, emptied = fit_row(row)
            try:
                statement = schema.insert_statement()
                written += _inserted(con.execute(statement, _params([fitted])))
            except ROW_ERRORS as e:
                self._reject(row, e)
                continue
            if emptied:
                logger.warning(
                    "ledger: row %s stored without %s (values DuckDB refuses)",
                    row.get("id"),
                    ", ".join(emptied),
                )
        return written

    def _reject(self, row: Row, error: Exception) -> None:
        self.rows_rejected += 1
        where = str(self.rejected_path)
        try:
            with open(self.rejected_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(row, default=str) + "\n")
        except OSError as e:
            where = f"nowhere ({e.strerror}): it is lost"
        logger.error(
            "ledger: row %s refused by DuckDB (%s); set aside in %s",
            row.get("id"),
            str(error).splitlines()[0],
            where,
        )

    def _connect(self) -> duckdb.DuckDBPyConnection:
        # One DuckDB thread: a batch insert needs no more, and the proxy keeps the CPU.
        return duckdb.connect(str(self.path), config={"threads": 1})

    # health, reported once per change

    def _db_state(self, ok: bool, reason: str) -> None:
        if ok == self.db_ok:
            return
        self.db_ok = ok
        self._report("ledger", ok, reason)

    def _journal_state(self, ok: bool, reason: str) -> None:
        self._report("journal", ok, reason)

    def _report(self, store: str, ok: bool, reason: str) -> None:
        if self.on_state is not None:
            self.on_state(store, ok, reason)
            return
        path = self.path if store == "ledger" else self.journal_path
        if ok:
            logger.info("ledger: %s writable again", path)
        else:
            logger.error(
                "ledger: cannot write %s (%s); rows are kept and retried",
                path,
                reason.splitlines()[0] if reason else "unknown error",
            )


def _inserted(cursor: duckdb.DuckDBPyConnection) -> int:
    found = cursor.fetchone()
    return int(found[0]) if found else 0


def _columns(rows: Iterable[Row]) -> list[list[Any]]:
    rows = list(rows)
    return [[row.get(name) for row in rows] for name in schema.NAMES]


def _params(rows: list[Row]) -> list[Any]:
    """The insert's parameters: the columns, then the earliest start time."""
    unique = list({row.get("id"): row for row in rows}.values())
    return [*_columns(unique), _earliest(unique)]


def _earliest(rows: list[Row]) -> datetime | None:
    """The first `ts` of the rows (journal rows hold it as text); None if unknown."""
    times = []
    for row in rows:
        value = row.get("ts")
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            return None
        times.append(value)
    return min(times, default=None)


def read_rows(
    path: Path, sql: str, params: list[Any] | None = None, *, wait_s: float = 10.0
) -> list[tuple[Any, ...]]:
    """Run a read-only query, waiting out the writer's short batch locks."""
    return read_queries(path, [(sql, params or [])], wait_s=wait_s)[0]


def read_queries(
    path: Path, queries: list[tuple[str, list[Any]]], *, wait_s: float = 10.0
) -> list[list[tuple[Any, ...]]]:
    """Run read-only queries on one connection, waiting out the writer's locks."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                return [con.execute(sql, params).fetchall() for sql, params in queries]
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise LedgerError(f"{path}: {e}") from None
            time.sleep(0.02)


def _budget_rows(rows: Iterable[Row], since: datetime) -> Iterable[Row]:
    """Journal-shaped rows with a valid cost from `since` on, typed as DuckDB's are."""
    for row in rows:
        cost = _cost(row.get("cost_usd"))
        ts = _timestamp(row.get("ts"))
        if cost and ts is not None and ts >= since:
            yield {**{n: row.get(n) for n in BUDGET_FIELDS}, "ts": ts, "cost_usd": cost}


def _cost(value: object) -> Decimal | None:
    """A journal row's cost: a finite, non-negative decimal, else None."""
    try:
        cost = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return cost if cost.is_finite() and cost >= 0 else None


def _timestamp(value: object) -> datetime | None:
    """A journal row's start time, if it is an ISO time with an offset."""
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else None


def _summed_sql(stretches: int) -> str:
    """Spend summed per caller, model, tags and stretch; parameters: since, starts.

    The starts come latest first: a row belongs to the first one it is not before.
    """
    stretch = " ".join(f"WHEN ts >= ${i + 2} THEN ${i + 2}" for i in range(stretches))
    return (
        f"SELECT {', '.join(CALLER_FIELDS)},"
        f" CASE {stretch} END AS stretch, sum(cost_usd)"
        " FROM requests WHERE ts >= $1 AND cost_usd > 0 GROUP BY ALL"
    )
