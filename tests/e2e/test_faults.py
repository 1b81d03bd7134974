"""Gateway faults end to end: kill -9 under load, graceful stop, ledger unavailable.

Real mitmdump processes on loopback, killed or stopped by PID; the ledger broken
by a second process holding it, garbage bytes, a directory where the journal
belongs, or a small file system that fills up (root only).
"""

import http.client
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from faultkit import SmallDisk, held, wait_for

from harness import FakeProvider, Gateway, ledger_rows, wait_rows

from .hardening import BODY, KEYS, call, gauge, refusal_reason, scrape, start

pytestmark = pytest.mark.e2e

LOAD_CALLS = 200
KILL_AFTER = 40  # completed calls per phase before the kill
CAROL_CAP = Decimal("0.02")


def load_call(port: int, n: int) -> tuple[str, bool]:
    """Call number n; (its tag, whether the client got a complete response)."""
    stream = n % 2 == 0
    user = "carol" if n % 4 == 1 else "bob"
    tag = f"load:{n}"
    headers = {
        "x-api-key": KEYS[user],
        "content-type": "application/json",
        "x-tollgate-tags": tag,
        "x-fake-usage": f"input={100 + n},output=20",
        "x-fake-events": "6",
        "x-fake-delay-ms": "15",
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(
            "POST", "/v1/messages", json.dumps({**BODY, "stream": stream}), headers
        )
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        return tag, False
    finally:
        connection.close()
    if response.status == 200:
        return tag, (b"message_stop" in data) if stream else (b'"usage"' in data)
    return tag, response.status == 402 and b"budget" in data  # refusals count too


def run_phase(gateway: Gateway, first: int, count: int) -> tuple[list[str], int]:
    """Send `count` calls from 16 threads, kill -9 the gateway mid-way."""
    with ThreadPoolExecutor(16) as pool:
        futures = [
            pool.submit(load_call, gateway.port, n) for n in range(first, first + count)
        ]
        wait_for(
            lambda: sum(f.done() and f.result()[1] for f in futures) >= KILL_AFTER,
            timeout_s=30,
            every_s=0.005,
        )
        gateway.proc.send_signal(signal.SIGKILL)
        results = [f.result() for f in futures]
    gateway.close()
    return [tag for tag, complete in results if complete], len(results)


def log_of(gateway: Gateway) -> str:
    """The gateway's log, also after it stopped."""
    return gateway.log_path.read_text(errors="replace")


def missing_rows_replayed(gateway: Gateway) -> int:
    """Rows the journal held that DuckDB did not, as the start-up log says."""
    found = re.findall(
        r"journal rows replayed into .*?, (\d+) of them missing", gateway.log_text()
    )
    return sum(int(n) for n in found)


def test_no_completed_call_lost_when_gateway_killed_under_load(
    fake: FakeProvider, tmp_path: Path
) -> None:
    users = {"carol": f"{{max_budget: {CAROL_CAP}}}"}
    extra = "org: {max_budget: 1000}\n"
    db = tmp_path / "spend.duckdb"
    completed: list[str] = []
    recovered = 0
    half = LOAD_CALLS // 2
    for first in (0, half):  # two kills
        gateway, _ = start(tmp_path, fake, users, extra, db=db)
        recovered += missing_rows_replayed(gateway)
        done, _ = run_phase(gateway, first, half)
        completed += done

    gateway, metrics = start(tmp_path, fake, users, extra, db=db)
    try:
        recovered += missing_rows_replayed(gateway)
        rows = ledger_rows(db)
        page = scrape(metrics)
    finally:
        gateway.close()
    tags = {tag for row in rows for tag in row["tags"]}
    lost = sorted(set(completed) - tags)
    org_sum = sum((r["cost_usd"] for r in rows), Decimal(0))
    carol_sum = sum(
        (r["cost_usd"] for r in rows if r["user_id"] == "carol"), Decimal(0)
    )
    print(
        f"\nFIGURES kill-9: calls={LOAD_CALLS} kills=2 completed={len(completed)}"
        f" rows={len(rows)} missing_from_duckdb_replayed={recovered} lost={len(lost)}"
        f" carol_spent={carol_sum} cap={CAROL_CAP}"
        f" overshoot={max(carol_sum - CAROL_CAP, Decimal(0))}"
    )
    assert lost == []
    assert len(completed) >= 2 * KILL_AFTER
    assert gauge(page, "tollgate_budget_spent_usd", "org") == pytest.approx(
        float(org_sum)
    )
    assert gauge(page, "tollgate_budget_spent_usd", "user:carol") == pytest.approx(
        float(carol_sum)
    )
    assert carol_sum <= CAROL_CAP


def stream_reader(port: int, started: threading.Semaphore, out: list[bytes]) -> None:
    headers = {
        "x-api-key": KEYS["bob"],
        "content-type": "application/json",
        "x-fake-events": "20",
        "x-fake-delay-ms": "50",
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST", "/v1/messages", json.dumps({**BODY, "stream": True}), headers
        )
        response = connection.getresponse()
        first = response.read(1)
        started.release()
        out.append(first + response.read())
    except (OSError, http.client.HTTPException) as e:
        started.release()
        out.append(f"failed: {e}".encode())
    finally:
        connection.close()


def open_streams(port: int, count: int) -> tuple[list[threading.Thread], list[bytes]]:
    started = threading.Semaphore(0)
    out: list[bytes] = []
    threads = [
        threading.Thread(target=stream_reader, args=(port, started, out))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=20)
    return threads, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_started_streams_finish_and_are_recorded_when_gateway_stopped(
    fake: FakeProvider, tmp_path: Path, sig: signal.Signals
) -> None:
    gateway, _ = start(tmp_path, fake)
    threads, out = open_streams(gateway.port, 6)
    gateway.proc.send_signal(sig)
    time.sleep(0.2)
    late = call(gateway.port)
    gateway.proc.wait(20)
    gateway.close()
    for thread in threads:
        thread.join(20)

    assert (late[0], refusal_reason(late[1])) == (503, "stopping")
    assert len(out) == 6 and all(b"message_stop" in body for body in out), out
    rows = ledger_rows(gateway.db)
    assert sorted(r["outcome"] for r in rows) == ["blocked"] + ["ok"] * 6
    assert (tmp_path / "spend.duckdb.journal").read_bytes() == b""
    assert "waiting up to 30 s for 6 calls in flight" in log_of(gateway)


def test_call_recorded_as_aborted_when_it_outlasts_the_drain(
    fake: FakeProvider, tmp_path: Path
) -> None:
    gateway, _ = start(tmp_path, fake, budget_drain_s="1")
    started = threading.Semaphore(0)
    out: list[bytes] = []
    slow = threading.Thread(target=stream_reader, args=(gateway.port, started, out))
    slow.start()
    assert started.acquire(timeout=20)
    gateway.close(signal.SIGTERM)  # the stream needs about 1 s more than allowed
    slow.join(20)
    [row] = ledger_rows(gateway.db)
    assert (row["outcome"], row["reason"], row["usage_estimated"]) == (
        "aborted",
        "gateway stopped",
        True,
    )
    assert row["cost_usd"] > 0


def test_budget_enforced_from_memory_and_rows_spooled_when_ledger_locked(
    fake: FakeProvider, tmp_path: Path
) -> None:
    gateway, _ = start(tmp_path, fake, {"bob": "{max_budget: 0.01}"})
    costly = {"x-fake-usage": "input=1000,output=400"}  # 0.009 USD
    try:
        assert call(gateway.port, "carol")[0] == 200
        wait_rows(gateway.db, 1)
        with held(gateway.db):
            assert call(gateway.port, headers=costly)[0] == 200
            assert wait_for(lambda: "cannot write the ledger" in gateway.log_text())
            status, headers, _ = call(gateway.port)
            assert (status, refusal_reason(headers)) == (402, "budget")
            assert call(gateway.port, "carol")[0] == 200
        rows = wait_rows(gateway.db, 4)
        log = gateway.log_text()
    finally:
        gateway.close()
    assert [r["outcome"] for r in rows] == ["ok", "ok", "blocked", "ok"]
    assert log.count("cannot write the ledger") == 1
    assert "keep_serving, so calls go on and budgets are enforced from memory" in log
    assert "is writable again" in log


def test_calls_refused_then_resume_when_fail_closed_and_ledger_corrupted(
    fake: FakeProvider, tmp_path: Path
) -> None:
    gateway, _ = start(tmp_path, fake, on_ledger_error="fail_closed")
    good = tmp_path / "good.duckdb"
    try:
        assert call(gateway.port)[0] == 200
        wait_rows(gateway.db, 1)
        gateway.db.rename(good)
        gateway.db.write_bytes(b"garbage" * 4096)
        assert call(gateway.port)[0] == 200  # its row is what the writer fails on
        assert wait_for(lambda: "cannot write the ledger" in gateway.log_text())
        status, headers, body = call(gateway.port)
        assert (status, refusal_reason(headers)) == (503, "ledger")
        assert b"fail_closed" in body
        good.replace(gateway.db)
        assert wait_for(lambda: call(gateway.port)[0] == 200, every_s=0.3)
        log = gateway.log_text()
    finally:
        gateway.close()
    assert "fail_closed, so calls are refused with 503 until it is back" in log
    assert "not a valid DuckDB database file" in log
    outcomes = [r["outcome"] for r in ledger_rows(gateway.db)]
    assert outcomes[:3] == ["ok", "ok", "blocked"] and outcomes[-1] == "ok"


@pytest.mark.parametrize(
    ("mode", "status"),
    [("keep_serving", 200), ("fail_closed", 503)],
    ids=["keep_serving", "fail_closed"],
)
def test_journal_fault_logged_once_and_policy_followed_when_journal_unwritable(
    fake: FakeProvider, tmp_path: Path, mode: str, status: int
) -> None:
    (tmp_path / "spend.duckdb.journal").mkdir()  # a directory cannot be opened to write
    gateway, _ = start(tmp_path, fake, on_ledger_error=mode)
    try:
        statuses = [call(gateway.port)[0] for _ in range(3)]
        rows = wait_rows(gateway.db, 3)
        log = gateway.log_text()
    finally:
        gateway.close()
    assert statuses == [status] * 3
    assert len(rows) == 3
    assert log.count("cannot write the journal") == 1
    assert "kept in memory only (a crash now loses them)" in log


def test_gateway_serves_and_rebuilds_budgets_when_corrupt_ledger_replaced(
    fake: FakeProvider, tmp_path: Path
) -> None:
    db = tmp_path / "spend.duckdb"
    db.write_bytes(b"not a ledger\n" * 1000)
    gateway, metrics = start(tmp_path, fake, {"bob": "{max_budget: 5}"})
    try:
        assert (
            call(gateway.port, headers={"x-fake-usage": "input=1000,output=0"})[0]
            == 200
        )
        log = gateway.log_text()
        assert "the ledger cannot be read" in log and "cannot write the ledger" in log
        db.rename(tmp_path / "spend.duckdb.corrupt")
        assert wait_for(lambda: "ledger readable again" in gateway.log_text(), 15)
        assert len(wait_rows(db, 1)) == 1
        spent = gauge(scrape(metrics), "tollgate_budget_spent_usd", "user:bob")
    finally:
        gateway.close()
    assert spent == pytest.approx(0.003)
    assert log_of(gateway).count("cannot write the ledger") == 1


def test_calls_served_and_written_later_when_disk_full(
    fake: FakeProvider, tmp_path: Path, small_disk: SmallDisk
) -> None:
    db = small_disk.path / "spend.duckdb"
    gateway, _ = start(tmp_path, fake, {"bob": "{max_budget: 0.01}"}, db=db)
    costly = {"x-fake-usage": "input=1000,output=400"}
    try:
        assert call(gateway.port, "carol")[0] == 200
        wait_rows(db, 1)
        small_disk.fill()
        assert call(gateway.port, headers=costly)[0] == 200
        assert call(gateway.port)[0] == 402  # bob's budget, from memory
        assert wait_for(lambda: "cannot write the" in gateway.log_text())
        small_disk.free()
        rows = wait_rows(db, 3, timeout_s=20)
    finally:
        gateway.close()
    assert [r["outcome"] for r in rows] == ["ok", "ok", "blocked"]
