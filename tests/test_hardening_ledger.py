"""The ledger under faults: crash, lock, corruption, full disk, read-only, bad rows.

Every fault is real: a killed process, a second process holding the DuckDB file,
garbage bytes, a tmpfs that fills up or turns read-only, /dev/full as the journal.
"""

import json
import logging
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from faultkit import SmallDisk, held, make_row, wait_for

from tollgate.errors import LedgerError
from tollgate.ledger import Ledger, read_rows

CRASH_SCRIPT = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from faultkit import make_row
from tollgate.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]), flush_interval_s=0.05)
ledger.start()
for i in range(int(sys.argv[3])):
    ledger.append(make_row(id=f"row-{i}"))
os.kill(os.getpid(), signal.SIGKILL)
"""


class States:
    """What the ledger reported through `on_state`, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, str]] = []

    def __call__(self, store: str, ok: bool, reason: str) -> None:
        self.seen.append((store, ok, reason))

    def changes(self) -> list[tuple[str, bool]]:
        return [(store, ok) for store, ok, _ in self.seen]


def ids_in(db: Path) -> set[str]:
    return {row[0] for row in read_rows(db, "SELECT id FROM requests")}


def started(db: Path, states: States | None = None, grace_s: float = 0.0) -> Ledger:
    ledger = Ledger(db, flush_interval_s=0.05, on_state=states, lock_grace_s=grace_s)
    ledger.start()
    return ledger


def test_ledger_recovers_every_row_when_process_killed_after_append(
    tmp_path: Path,
) -> None:
    db = tmp_path / "spend.duckdb"
    tests = str(Path(__file__).parent)
    addons = str(Path(__file__).parents[1] / "addons")
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(db), tests, "300"],
        env={**os.environ, "PYTHONPATH": addons},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()

    ledger = started(db)
    try:
        assert ledger.wait_idle()
        assert ids_in(db) == {f"row-{i}" for i in range(300)}
    finally:
        ledger.close()
    assert (tmp_path / "spend.duckdb.journal").read_bytes() == b""


def test_ledger_stores_each_call_once_when_journal_replays_rows_already_stored(
    tmp_path: Path,
) -> None:
    db = tmp_path / "spend.duckdb"
    rows = [make_row(), make_row(), make_row(ts="2020-01-01T00:00:00+00:00")]
    ledger = started(db)
    for row in rows:
        ledger.append(row)
    assert ledger.wait_idle()
    ledger.close()
    # a crash after DuckDB took the rows, before the journal was emptied
    journal = tmp_path / "spend.duckdb.journal"
    journal.write_text("".join(json.dumps(row) + "\n" for row in [*rows, rows[0]]))

    ledger = started(db)
    try:
        assert ledger.wait_idle()
    finally:
        ledger.close()
    stored = read_rows(db, "SELECT id, count(*) FROM requests GROUP BY id")
    assert sorted(stored) == sorted((row["id"], 1) for row in rows)


def test_ledger_spools_then_writes_all_when_another_process_held_the_file(
    tmp_path: Path,
) -> None:
    db = tmp_path / "spend.duckdb"
    states = States()
    ledger = started(db, states)
    try:
        with held(db):
            rows = [make_row() for _ in range(40)]
            for row in rows:
                ledger.append(row)
            assert wait_for(lambda: not ledger.db_ok)
            errors_before = ledger.write_errors
            wait_for(lambda: False, timeout_s=1.0)
            assert ledger.backlog == 40
            # backoff, not a spin: a handful of tries in a second
            assert ledger.write_errors - errors_before <= 6
        assert ledger.wait_idle()
        assert {r["id"] for r in rows} <= ids_in(db)
    finally:
        ledger.close()
    assert states.changes() == [("ledger", False), ("ledger", True)]
    assert "lock" in states.seen[0][2].lower()


def test_ledger_stays_healthy_when_a_reader_holds_the_file_briefly(
    tmp_path: Path,
) -> None:
    db = tmp_path / "spend.duckdb"
    states = States()
    ledger = started(db, states, grace_s=3.0)
    row = make_row()
    try:
        with held(db):
            ledger.append(row)
            assert wait_for(lambda: ledger.failing)
            assert ledger.healthy
        assert ledger.wait_idle()
    finally:
        ledger.close()
    assert states.seen == []
    assert ids_in(db) == {row["id"]}


def test_ledger_counts_unwritten_rows_when_file_cannot_be_read(tmp_path: Path) -> None:
    db = tmp_path / "spend.duckdb"
    ledger = started(db)
    since = datetime.now(UTC) - timedelta(hours=1)
    try:
        with held(db):
            rows = [make_row(cost="0.5") for _ in range(3)]
            for row in rows:
                ledger.append(row)
            with pytest.raises(LedgerError):
                ledger.rows_since([since], wait_s=0)
            unstored = ledger.unstored_rows_since(since)
            assert sorted(r["id"] for r in unstored) == sorted(r["id"] for r in rows)
        assert ledger.wait_idle()
        [summed] = ledger.rows_since([since])
        assert (summed["user_id"], summed["cost_usd"]) == ("bob", Decimal("1.5"))
    finally:
        ledger.close()


def test_ledger_logs_once_and_resumes_when_corrupt_file_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "spend.duckdb"
    db.write_bytes(b"this is not a duckdb file" * 400)
    caplog.set_level(logging.INFO, logger="tollgate.ledger")
    ledger = Ledger(db, flush_interval_s=0.05)
    ledger.start()
    try:
        row = make_row()
        ledger.append(row)
        wait_for(lambda: False, timeout_s=1.5)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "not a valid DuckDB database file" in errors[0].getMessage()
        assert ledger.write_errors <= 6
        os.replace(db, tmp_path / "spend.duckdb.corrupt")
        assert ledger.wait_idle(timeout_s=15)
        assert ids_in(db) == {row["id"]}
    finally:
        ledger.close()
    assert any("writable again" in r.getMessage() for r in caplog.records)


def test_ledger_stores_row_without_bad_values_when_duckdb_refuses_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "spend.duckdb"
    ledger = started(db)
    good = [make_row() for _ in range(3)]
    odd = make_row(status="not-a-number", latency_ms=10**12, model="claude\ud800")
    unfixable = make_row(id="bad-\ud800-id")
    try:
        for row in [good[0], odd, unfixable, *good[1:]]:
            ledger.append(row)
        assert ledger.wait_idle()
        assert ledger.db_ok and ledger.rows_rejected == 1
    finally:
        ledger.close()
    assert ids_in(db) == {r["id"] for r in [*good, odd]}
    [stored] = read_rows(
        db,
        "SELECT status, latency_ms, model, cost_usd FROM requests WHERE id = ?",
        [odd["id"]],
    )
    assert stored[:3] == (None, None, "claude?")
    assert str(stored[3]) == "0.0010000000"
    assert "stored without" in caplog.text
    assert "bad-" in (tmp_path / "spend.duckdb.rejected").read_text()


def test_ledger_reports_journal_once_and_still_writes_when_journal_full(
    tmp_path: Path,
) -> None:
    db = tmp_path / "spend.duckdb"
    (tmp_path / "spend.duckdb.journal").symlink_to("/dev/full")
    states = States()
    ledger = started(db, states)
    rows = [make_row() for _ in range(5)]
    try:
        for row in rows:
            ledger.append(row)
        assert not ledger.journal.ok and not ledger.healthy
        assert ledger.wait_idle()
    finally:
        ledger.close()
    assert ids_in(db) == {r["id"] for r in rows}
    assert states.changes() == [("journal", False)]
    assert "No space left on device" in states.seen[0][2]


def test_second_ledger_refused_when_journal_already_in_use(tmp_path: Path) -> None:
    db = tmp_path / "spend.duckdb"
    first = started(db)
    try:
        with pytest.raises(LedgerError, match="another gateway uses the same ledger"):
            Ledger(db).start()
    finally:
        first.close()
    Ledger(db).start()  # free again once the first is closed


def test_ledger_keeps_journal_for_next_start_when_closed_while_locked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "spend.duckdb"
    ledger = started(db)
    rows = [make_row() for _ in range(4)]
    with held(db):
        for row in rows:
            ledger.append(row)
        ledger.close(timeout_s=10)
    assert "4 rows not written" in caplog.text
    assert "the journal keeps them for the next start" in caplog.text

    again = started(db)
    try:
        assert again.wait_idle()
    finally:
        again.close()
    assert ids_in(db) == {r["id"] for r in rows}


def test_ledger_catches_up_when_disk_was_full(small_disk: SmallDisk) -> None:
    db = small_disk.path / "spend.duckdb"
    states = States()
    ledger = started(db, states)
    rows = [make_row() for _ in range(200)]
    try:
        ledger.append(make_row())
        assert ledger.wait_idle()
        small_disk.fill()
        for row in rows:
            ledger.append(row)
        assert wait_for(lambda: not ledger.healthy)
        small_disk.free()
        assert ledger.wait_idle(timeout_s=20)
    finally:
        ledger.close()
    assert {r["id"] for r in rows} <= ids_in(db)
    assert ("journal", False) in states.changes()


def test_ledger_catches_up_when_started_on_read_only_directory(
    small_disk: SmallDisk,
) -> None:
    db = small_disk.path / "spend.duckdb"
    small_disk.read_only(True)
    states = States()
    ledger = started(db, states)
    rows = [make_row() for _ in range(20)]
    try:
        for row in rows:
            ledger.append(row)
        assert not ledger.db_ok and not ledger.journal.ok
        small_disk.read_only(False)
        assert ledger.wait_idle(timeout_s=20)

        def next_call_heals() -> bool:  # the journal is reopened by later rows
            ledger.append(make_row())
            return ledger.healthy

        assert wait_for(next_call_heals, every_s=0.2)
    finally:
        ledger.close()
    assert {r["id"] for r in rows} <= ids_in(db)
    assert sorted(states.changes()) == [
        ("journal", False),
        ("journal", True),
        ("ledger", False),
        ("ledger", True),
    ]
    assert "Read-only file system" in " ".join(reason for _, _, reason in states.seen)
