#!/usr/bin/env python3
"""How the ledger's costs grow with its size: one batch write, and the budget rebuild.

For each size it fills a scratch ledger with that many calls of this month (in SQL),
then measures the process CPU to write a batch of 300 calls through `Ledger`, and
the time to rebuild every budget of a 1,000-user policy from it.

    python scripts/bench_ledger.py [--sizes 0,100000,1000000,3000000]
"""

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "addons"))

import bench_procs  # noqa: E402
import duckdb  # noqa: E402

from tollgate.budgets import BudgetBook  # noqa: E402
from tollgate.ledger import Ledger  # noqa: E402
from tollgate.policy import load_policy  # noqa: E402

BATCH = 300
FILL = """
INSERT INTO requests (id, ts, provider, endpoint, model, price_model, user_id, team,
    key_alias, tags, status, outcome, input_tokens, output_tokens, cost_usd)
SELECT uuid()::VARCHAR, now() - INTERVAL (i % 86400) SECOND, 'anthropic', 'messages',
    'claude-sonnet-4-5', 'claude-sonnet-4-5', printf('user-%04d', i % 1000),
    printf('team-%02d', i % 1000 % 50), printf('user-%04d-cli', i % 1000),
    ['project:bench'], 200, 'ok', 1000, 100, 0.0045
FROM range(?) t(i)
"""


def row() -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex,
        "ts": datetime.now(UTC),
        "provider": "anthropic",
        "endpoint": "messages",
        "model": "claude-sonnet-4-5",
        "price_model": "claude-sonnet-4-5",
        "user_id": "user-0001",
        "team": "team-01",
        "tags": ["project:bench"],
        "status": 200,
        "outcome": "ok",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cost_usd": "0.0045",
    }


def measure(tmp: Path, size: int, policy_path: Path) -> str:
    db = tmp / f"spend-{size}.duckdb"
    ledger = Ledger(db, flush_interval_s=0.05)
    ledger.start()
    ledger.append(row())
    ledger.wait_idle()
    ledger.close()
    with duckdb.connect(str(db)) as con:
        con.execute(FILL, [size])

    ledger = Ledger(db, flush_interval_s=0.05)
    ledger.start()
    try:
        cpu = time.process_time()
        for _ in range(BATCH):
            ledger.append(row())
        if not ledger.wait_idle(60):
            raise SystemExit("the ledger did not write the batch within 60 s")
        batch_ms = (time.process_time() - cpu) * 1000

        book = BudgetBook(load_policy(policy_path), lambda: datetime.now(UTC))
        began = time.perf_counter()
        book.load(ledger.rows_since(book.window_starts()))
        rebuild_s = time.perf_counter() - began
    finally:
        ledger.close()
    org = sum(b.spent for b in book.budgets["org"])
    return (
        f"{size:>10,} rows: batch of {BATCH} written with {batch_ms:6.1f} ms CPU;"
        f" budgets rebuilt in {rebuild_s:5.2f} s (org spent ${org})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,100000,1000000,3000000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="tollgate-ledger-") as name:
        tmp = Path(name)
        policy = bench_procs.write_policy(tmp, users=1000, teams=50)
        for size in sizes:
            print(measure(tmp, size, policy.path), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
