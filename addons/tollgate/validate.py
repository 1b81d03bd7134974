"""Typed reads from loaded YAML that collect every mistake with its file and line."""

import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from .errors import ConfigError
from .yamlsrc import Source, join

T = TypeVar("T")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Checker:
    """Reads values by YAML path; each bad value adds one located error line."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.errors: list[tuple[int, str]] = []

    def fail(self, ypath: str, message: str) -> None:
        where = self.source.where(ypath)
        line = int(where.rpartition(":")[2]) if where != self.source.path else 0
        self.errors.append((line, f"{where}: {ypath}: {message}"))

    def raise_if_failed(self, error: type[ConfigError]) -> None:
        if self.errors:
            lines = [text for _, text in sorted(self.errors, key=lambda e: e[0])]
            raise error("\n".join(lines))

    def mapping(self, value: object, ypath: str, fields: set[str]) -> dict[str, Any]:
        """A mapping whose keys are all in `fields` (unknown keys are errors)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(ypath, f"expected a mapping, got {value!r}")
            return {}
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.fail(join(ypath, key), f"unknown field {key!r} - known: {known}")
        return value

    def entries(self, value: object, ypath: str) -> Iterator[tuple[str, str, Any]]:
        """(name, path, value) for each entry of a mapping keyed by names."""
        if value is None:
            return
        if not isinstance(value, dict):
            self.fail(ypath, f"expected a mapping of names, got {value!r}")
            return
        for name, item in value.items():
            yield str(name), join(ypath, name), item

    def usd(self, value: object, ypath: str) -> Decimal | None:
        """A non-negative amount of USD, exact."""
        if value is None:
            return None
        if not isinstance(value, bool) and isinstance(value, int | float):
            amount: Decimal | None = Decimal(str(value))
        else:
            amount = None
        if amount is None or not amount.is_finite() or amount < 0:
            self.fail(ypath, f"expected a number of USD >= 0, got {value!r}")
            return None
        return amount

    def count(self, value: object, ypath: str) -> int | None:
        """A whole number >= 1, or None when absent."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(ypath, f"expected a whole number >= 1, got {value!r}")
            return None
        return value

    def choice(self, value: object, ypath: str, options: tuple[str, ...]) -> str:
        if value is None:
            return options[0]
        if value not in options:
            self.fail(ypath, f"expected one of {', '.join(options)}, got {value!r}")
            return options[0]
        return str(value)

    def strings(self, value: object, ypath: str) -> tuple[str, ...] | None:
        """A list of non-empty strings, or None when absent."""
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v.strip() for v in value
        ):
            self.fail(ypath, f"expected a list of names, got {value!r}")
            return None
        return tuple(v.strip() for v in value)

    def fractions(self, value: object, ypath: str) -> tuple[Decimal, ...] | None:
        """Alert thresholds: fractions of a budget in (0, 10], e.g. [0.5, 0.8, 1]."""
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        found: list[Decimal] = []
        for i, item in enumerate(items):
            number = self.usd(item, join(ypath, i)) if item is not None else None
            if number is None or not 0 < number <= 10:
                if number is not None:
                    self.fail(
                        join(ypath, i), f"expected a fraction in (0, 10], got {item!r}"
                    )
                continue
            found.append(number)
        return tuple(sorted(set(found)))

    def parsed(
        self, value: object, ypath: str, parse: Callable[[object], T | None], what: str
    ) -> T | None:
        if value is None:
            return None
        result = parse(value)
        if result is None:
            self.fail(ypath, f"expected {what}, got {value!r}")
        return result

    def env_text(
        self, value: object, ypath: str, environ: dict[str, str]
    ) -> str | None:
        """A string with `${NAME}` taken from the gateway's environment."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(ypath, f"expected a string, got {value!r}")
            return None
        missing = [m for m in _ENV.findall(value) if m not in environ]
        if missing:
            self.fail(ypath, f"environment variable {missing[0]} is not set")
            return None
        return _ENV.sub(lambda m: environ[m.group(1)], value)


def is_decimal_text(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True
