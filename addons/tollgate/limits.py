"""Requests-per-minute and tokens-per-minute limits over sliding 60-second windows."""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class RateRefusal:
    scope: str
    kind: str  # "rpm" | "tpm"
    limit: int
    used: int
    retry_after_s: int


class SlidingWindow:
    """Amounts with their times; the sum of those younger than the window."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= now - WINDOW_S:
            self.total -= entries.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        if amount:
            self.entries.append((now, amount))
            self.total += amount

    def retry_after(self, now: float, excess: int) -> int:
        """Seconds until at least `excess` of the window's amount has aged out."""
        freed = 0
        for t, amount in self.entries:
            freed += amount
            if freed >= excess:
                return max(int(t + WINDOW_S - now) + 1, 1)
        return int(WINDOW_S)


class RateLimiter:
    """Per-scope rpm and tpm; scopes are labels such as `user:alice`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._requests: dict[str, SlidingWindow] = {}
        self._tokens: dict[str, SlidingWindow] = {}

    def _window(self, table: dict[str, SlidingWindow], scope: str) -> SlidingWindow:
        window = table.get(scope)
        if window is None:
            window = table[scope] = SlidingWindow()
        return window

    def admit(
        self, limits: list[tuple[str, int | None, int | None]], tokens: int
    ) -> RateRefusal | None:
        """Check each (scope, rpm, tpm); count the call in all if none says no."""
        now = self.clock()
        for scope, rpm, tpm in limits:
            if rpm is not None:
                window = self._window(self._requests, scope)
                window.prune(now)
                if window.total + 1 > rpm:
                    wait = window.retry_after(now, window.total + 1 - rpm)
                    return RateRefusal(scope, "rpm", rpm, window.total, wait)
            if tpm is not None:
                window = self._window(self._tokens, scope)
                window.prune(now)
                if window.total + tokens > tpm and window.total > 0:
                    wait = window.retry_after(now, window.total + tokens - tpm)
                    return RateRefusal(scope, "tpm", tpm, window.total, wait)
        for scope, rpm, tpm in limits:
            if rpm is not None:
                self._window(self._requests, scope).add(now, 1)
            if tpm is not None:
                self._window(self._tokens, scope).add(now, tokens)
        return None

    def correct_tokens(self, scopes: list[str], delta: int) -> None:
        """Replace an admission estimate with the real count once it is known."""
        now = self.clock()
        for scope in scopes:
            window = self._tokens.get(scope)
            if window is not None:
                window.add(now, delta)
