"""Budget threshold alerts: a WARNING line and webhooks, once per budget window.

A threshold t of a budget is crossed when spent >= t * limit. When a call crosses
several at once, one alert names the highest and covers the others. Webhooks are
posted by a background thread from a bounded queue, retried with backoff; the event
loop only enqueues. Each delivered alert is recorded in `<db>.alerts` (JSON lines), so
a restart does not send it again in the same window. A crossing found at start with
no record (the process died before delivering it) is sent then: at least once across
crashes, exactly once across clean restarts.

Payloads: Slack (`{"text": ...}`) or plain JSON with money as exact decimal strings.
"""

import http.client
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .admission import usd
from .budgets import ScopeBudget
from .policy import Webhook

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)
MAX_QUEUED = 1000
Key = tuple[str, str, Decimal]


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One threshold crossing of one budget window, as it stood when it was found."""

    scope: str
    kind: str
    name: str
    duration: str
    limit: Decimal
    spent: Decimal
    threshold: Decimal
    covers: tuple[Decimal, ...]
    window_start: datetime
    window_end: datetime
    forecast: datetime | None

    @property
    def percent(self) -> Decimal:
        return (self.spent * 100 / self.limit).quantize(Decimal("0.1"))

    def text(self) -> str:
        pace = "at this pace it lasts until the reset"
        if self.forecast is not None:
            pace = f"at this pace it runs out {self.forecast.isoformat()}"
        return (
            f"Tollgate: budget {self.scope} passed {self.threshold * 100:.0f}%:"
            f" spent {usd(self.spent)} of {usd(self.limit)} ({self.percent}%) this"
            f" {self.duration} window; resets {self.window_end.isoformat()}; {pace}"
        )

    def payload(self, fmt: str) -> dict[str, Any]:
        """The webhook body: Slack's `text`, or every field (money as exact strings)."""
        if fmt == "slack":
            return {"text": self.text()}
        return {
            "scope": self.scope,
            "kind": self.kind,
            "name": self.name,
            "spent": str(self.spent),
            "limit": str(self.limit),
            "percent": float(self.percent),
            "threshold": float(self.threshold),
            "window": self.duration,
            "window_start": self.window_start.isoformat(),
            "resets_at": self.window_end.isoformat(),
            "forecast_exhausted_at": _iso(self.forecast),
        }

    def record(self, sent_at: datetime) -> str:
        """The line kept in `<db>.alerts` once delivered."""
        return json.dumps(
            {
                "budget": self.scope,
                "window_start": self.window_start.isoformat(),
                "resets_at": self.window_end.isoformat(),
                "thresholds": [str(t) for t in self.covers],
                "sent_at": sent_at.isoformat(),
            }
        )


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def forecast_exhausted_at(
    spent: Decimal, limit: Decimal, start: datetime, end: datetime, now: datetime
) -> datetime | None:
    """When spend reaches `limit` at the window's pace so far; None if not before `end`.

    Linear: the pace is spent / (now - start). A spent budget returns `now`.
    """
    if spent >= limit:
        return now
    elapsed = (now - start).total_seconds()
    if spent <= 0 or elapsed <= 0:
        return None
    seconds = round(float((limit - spent) / spent) * elapsed)
    if seconds >= (end - now).total_seconds():
        return None
    return now + timedelta(seconds=seconds)


def crossed(budget: ScopeBudget, sent: set[Key]) -> list[Decimal]:
    """Thresholds the budget's spend has reached that were not alerted yet."""
    if budget.limit <= 0 or budget.spent <= 0 or budget.window_start is None:
        return []
    found: list[Decimal] = []
    start = ""
    for t in sorted(budget.thresholds):
        if budget.spent < t * budget.limit:
            break  # higher thresholds are not reached either
        if t in budget.fired:
            continue
        start = start or budget.window_start.isoformat()
        if (budget.label, start, t) not in sent:
            found.append(t)
    return found


class SentAlerts:
    """The `<db>.alerts` file: which thresholds of which windows were delivered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[Key] = set()
        self._failed = False

    def load(self, now: datetime) -> None:
        """Read the records of windows still open at `now`; older ones are dropped."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        except OSError as e:
            logger.error(
                "alerts: cannot read %s (%s); alerts already sent this window"
                " may be sent again",
                self.path,
                e.strerror,
            )
            return
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
                window = (str(record["budget"]), str(record["window_start"]))
                thresholds = [Decimal(str(t)) for t in record["thresholds"]]
                ends = datetime.fromisoformat(record["resets_at"])
            except (ValueError, KeyError, TypeError, ArithmeticError):
                continue
            if ends > now:
                kept.append(line)
                self.keys.update((*window, t) for t in thresholds)
        if len(kept) != len(lines):
            self._rewrite(kept)

    def _rewrite(self, lines: list[str]) -> None:
        scratch = self.path.with_name(self.path.name + ".tmp")
        try:
            scratch.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            os.replace(scratch, self.path)
        except OSError as e:
            logger.warning("alerts: cannot compact %s: %s", self.path, e.strerror)

    def record(self, alert: Alert, sent_at: datetime) -> None:
        """Append one delivered alert (called from the delivery thread)."""
        line = alert.record(sent_at)
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            if not self._failed:
                logger.error(
                    "alerts: cannot write %s (%s); a restart may send this"
                    " window's alerts again",
                    self.path,
                    e.strerror,
                )
            self._failed = True
            return
        self._failed = False


class Delivery:
    """Posts alerts to webhooks from a bounded queue on a daemon thread."""

    def __init__(
        self,
        sent: SentAlerts,
        now: Callable[[], datetime],
        *,
        backoff_s: Sequence[float] = BACKOFF_S,
        timeout_s: float = 5.0,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.sent = sent
        self.now = now
        self.backoff_s = tuple(backoff_s)
        self.timeout_s = timeout_s
        self._queue: queue.Queue[tuple[Alert, tuple[Webhook, ...]] | None] = (
            queue.Queue(max_queued)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tollgate-alerts", daemon=True
        )
        self._thread.start()

    def submit(self, alert: Alert, hooks: tuple[Webhook, ...]) -> None:
        try:
            self._queue.put_nowait((alert, hooks))
        except queue.Full:
            logger.error(
                "alerts: %d alerts waiting for delivery; dropped the one for %s",
                self._queue.qsize(),
                alert.scope,
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued for up to `timeout_s`, then give up on the rest."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        self._stop.set()
        self._thread.join(1)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                alert, hooks = item
                if all([self._post(hook, alert) for hook in hooks]):
                    self.sent.record(alert, self.now())
            finally:
                self._queue.task_done()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until every queued alert was handled (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    def _post(self, hook: Webhook, alert: Alert) -> bool:
        data = json.dumps(alert.payload(hook.format)).encode()
        where = _safe_url(hook.url)
        problem = ""
        for attempt, delay in enumerate((0.0, *self.backoff_s)):
            if delay and self._stop.wait(delay):
                break
            request = urllib.request.Request(
                hook.url,
                data=data,
                method="POST",
                headers={"content-type": "application/json", "user-agent": "tollgate"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s):
                    return True
            except urllib.error.HTTPError as e:
                e.close()
                problem = f"HTTP {e.code}"
                if e.code < 500 and e.code != 429:
                    break
            except (OSError, ValueError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}: {e}"
            logger.debug("alerts: webhook %s try %d: %s", where, attempt + 1, problem)
        logger.error(
            "alerts: webhook %s gave up on the alert for %s (%s)",
            where,
            alert.scope,
            problem,
        )
        return False


def _safe_url(url: str) -> str:
    """Scheme and host only: Slack webhook paths are secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


class AlertWatcher:
    """The alerts observer: checks budgets whose spend grew, fires new crossings."""

    def __init__(self, engine: "Engine", sent: SentAlerts, delivery: Delivery) -> None:
        self.engine = engine
        self.sent = sent
        self.delivery = delivery

    def start(self) -> None:
        """Load the records of current windows, then fire crossings not yet sent."""
        self.sent.load(self.engine.clock.now())
        self.sweep(self.engine.book.all_budgets())

    def sweep(self, budgets: Iterable[ScopeBudget]) -> None:
        for budget in budgets:
            self._check(budget)

    def on_row(self, row: dict[str, Any], budgets: list[ScopeBudget]) -> None:
        try:
            self.sweep(budgets)
        except Exception:  # alerts must never break settling a call
            logger.exception("alerts: budgets of row %s not checked", row.get("id"))

    def on_policy(self, engine: "Engine") -> None:
        try:
            self.sweep(engine.book.all_budgets())
        except Exception:  # a reload must complete even if alerting fails
            logger.exception("alerts: budgets not checked after the policy reload")

    def on_overhead(self, seconds: float) -> None:
        return None

    def close(self) -> None:
        self.delivery.close()

    def _check(self, budget: ScopeBudget) -> None:
        found = crossed(budget, self.sent.keys)
        if not found or budget.window_start is None or budget.window_end is None:
            return
        now = self.engine.clock.now()
        alert = Alert(
            scope=budget.label,
            kind=budget.kind,
            name=budget.name,
            duration=str(budget.duration),
            limit=budget.limit,
            spent=budget.spent,
            threshold=found[-1],
            covers=tuple(found),
            window_start=budget.window_start,
            window_end=budget.window_end,
            forecast=forecast_exhausted_at(
                budget.spent, budget.limit, budget.window_start, budget.window_end, now
            ),
        )
        budget.fired.update(found)
        start = budget.window_start.isoformat()
        self.sent.keys.update((budget.label, start, t) for t in found)
        logger.warning("%s", alert.text())
        self.delivery.submit(alert, self.engine.policy.webhooks)
