"""Budget windows: when the current one started and when it resets, in a time zone.

`1mo` starts at midnight on the 1st, `1d` at midnight, `1w` on Monday at midnight,
all in the policy's time zone. Any other duration (`30d`, `12h`, `3mo`) is a fixed
window aligned to 2024-01-01 00:00 (a Monday) in that zone; `Nmo` counts whole months.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ANCHOR = datetime(2024, 1, 1)


@dataclass(frozen=True, slots=True)
class Duration:
    """A parsed `budget_duration` such as `1mo`, `1d`, `1w`, `30d`, `12h`."""

    count: int
    unit: str

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    def bounds(self, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """Start (inclusive) and end (exclusive) of the window holding `now`."""
        local = now.astimezone(tz)
        if self.unit == "mo":
            index = (local.year * 12 + local.month - 1) // self.count * self.count
            start = _month(index, tz)
            return start, _month(index + self.count, tz)
        if self.count == 1 and self.unit in ("d", "w"):
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            if self.unit == "w":
                midnight -= timedelta(days=local.weekday())
            start = midnight.replace(tzinfo=None)
            step = timedelta(days=1 if self.unit == "d" else 7)
            return _zoned(start, tz), _zoned(start + step, tz)
        size = self.count * _SECONDS[self.unit]
        anchor = _zoned(_ANCHOR, tz)
        elapsed = int((local - anchor).total_seconds()) // size * size
        start = anchor + timedelta(seconds=elapsed)
        return start, start + timedelta(seconds=size)


def _month(index: int, tz: ZoneInfo) -> datetime:
    year, month = divmod(index, 12)
    return datetime(year, month + 1, 1, tzinfo=tz)


def _zoned(naive: datetime, tz: ZoneInfo) -> datetime:
    return naive.replace(tzinfo=tz)


def parse_duration(text: object) -> Duration | None:
    """`1mo`, `30d`, `1w`, `12h`, `90m`, `3600s`; None when not of that form."""
    if not isinstance(text, str):
        return None
    found = _DURATION.match(text)
    if found is None or int(found.group(1)) == 0:
        return None
    return Duration(int(found.group(1)), found.group(2))
