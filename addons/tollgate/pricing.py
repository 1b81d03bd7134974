"""The price table (USD per million tokens) and the exact Decimal cost of one call.

`load_prices` validates a price file; `PriceTable.resolve` maps any spelling of a model
id (dated snapshot, Bedrock, Vertex, OpenRouter) to one entry, or to None when unknown.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from .errors import ConfigError, PriceError
from .usage import Usage
from .yamlsrc import Source, join, load_yaml

MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.0000000001")
DEFAULT_BATCH_DISCOUNT = Decimal("0.5")
WEB_SEARCH = "web_search"
DEFAULT_PRICES = Path(__file__).parent / "prices.yaml"

_CACHE_LIMIT = 4096
_MAX_ID = 256
_SEPARATORS = frozenset("-.:@/")
_ID = re.compile(r"[a-z0-9][a-z0-9._:@/+-]*")
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]*")
_REGION = re.compile(r"(?:us|us-gov|eu|apac|jp|au|global)\.")
_METHOD = re.compile(r":(?:stream)?(?:generatecontent|rawpredict|counttokens|predict)$")
_SUFFIXES = (
    re.compile(r"@(?:\d[\d-]*|latest|default)$"),  # Vertex: claude-sonnet-4-5@20250929
    re.compile(r"-v\d+(?::\d+)?(?::\d+k)?$"),  # Bedrock: -v1:0, -v1, -v1:0:200k
    re.compile(r"\[[a-z0-9]+\]$"),  # client-side context markers: sonnet[1m]
    re.compile(r"-latest$"),
    re.compile(r"-\d{8}$"),  # -20250514
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # -2024-08-06
)
_CLAUDE_FAMILY = "opus|sonnet|haiku|fable|mythos"
# A model name where a path prefix (vendor, ARN, `models/`) belongs.
_OTHER_MODEL = re.compile(r"claude|gpt|gemini|codex")
_MODEL_WORD = re.compile(r"(?:^|[/.:])(?:claude|gpt|gemini|chatgpt|o\d|codex)")
_CLAUDE_NUMBER_FIRST = re.compile(
    rf"claude-(\d+)((?:-\d+)?)-({_CLAUDE_FAMILY})(?=$|[-:])"
)
_CLAUDE_ZERO_MINOR = re.compile(rf"(claude-(?:{_CLAUDE_FAMILY})-\d+)-0$")
# A separator followed by a short number continues a version (`-5`, `.1`, `-5x`), so
# `claude-sonnet-5` must not price `claude-sonnet-5-5x` nor `gpt-5` price `gpt-5.3`.
_VERSION_GOES_ON = re.compile(r"[-.:@/]\d{1,2}(?!\d)")

_RATE_FIELDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
_REQUIRED_RATES = ("input", "output")
_MODEL_FIELDS = frozenset(
    {"provider", "aliases", "long_context", "per_request", *_RATE_FIELDS}
)
_LONG_FIELDS = frozenset({"above_prompt_tokens", *_RATE_FIELDS})
_PER_REQUEST_FIELDS = frozenset({WEB_SEARCH})
_TOP_FIELDS = frozenset({"version", "models", "batch_discount"})
_PER_MTOK = "a number of USD per million tokens >= 0"


def _no_fees() -> Mapping[str, Decimal]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Rates:
    """Prices of one tier in USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceEntry:
    """One priced model: base rates, an optional long-context tier, per-request fees."""

    key: str
    provider: str
    rates: Rates
    long_context_above: int | None = None
    long_context: Rates | None = None
    per_request: Mapping[str, Decimal] = field(default_factory=_no_fees, hash=False)
    aliases: tuple[str, ...] = ()

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates of a whole request whose prompt has `prompt_tokens` tokens."""
        if (
            self.long_context is not None
            and self.long_context_above is not None
            and prompt_tokens > self.long_context_above
        ):
            return self.long_context
        return self.rates


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceTable:
    """Every priced model of one price file, with cached model-id resolution."""

    source: str
    entries: Mapping[str, PriceEntry] = field(hash=False)
    batch_discount: Decimal = DEFAULT_BATCH_DISCOUNT
    _names: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _longest_first: tuple[str, ...] = field(
        init=False, repr=False, compare=False, hash=False
    )
    _cache: dict[str, PriceEntry | None] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        names: dict[str, str] = {}
        for key, entry in self.entries.items():
            for alias in entry.aliases:
                names.setdefault(alias, key)
        names.update({key: key for key in self.entries})
        longest = tuple(sorted(self.entries, key=lambda k: (-len(k), k)))
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_longest_first", longest)
        object.__setattr__(self, "_cache", {})

    def describe(self) -> str:
        return f"{len(self.entries)} priced models from {self.source}"

    def resolve(self, model: str | None) -> PriceEntry | None:
        """The entry pricing `model`, or None when no entry safely matches it."""
        if not isinstance(model, str) or not model or len(model) > 3 * _MAX_ID:
            return None
        cache = self._cache
        try:
            return cache[model]
        except KeyError:
            pass
        entry = self._lookup(model)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[model] = entry
        return entry

    def _lookup(self, model: str) -> PriceEntry | None:
        stages = _stages(model)
        if not stages or len(stages[-1]) > _MAX_ID:
            return None
        for spelling in stages:
            key = self._names.get(spelling)
            if key is not None:
                return self.entries[key]
        normal = stages[-1]
        for key in self._longest_first:
            if normal.startswith(key) and _ends_on_separator(normal, len(key)):
                if _OTHER_MODEL.search(normal, len(key)):
                    return None  # `claude-haiku-4-5@claude-opus-4-1`
                return self.entries[key]
        return None

    def cost(self, entry: PriceEntry, usage: Usage, *, batch: bool = False) -> Decimal:
        """USD of one call, exact to 10 decimal places; batch discounts tokens only."""
        rates = entry.rates_for(usage.prompt_tokens)
        with localcontext() as ctx:
            ctx.prec = 60
            tokens = (
                _n(usage.input_tokens) * rates.input
                + _n(usage.output_tokens) * rates.output
                + _n(usage.cache_read_tokens) * rates.cache_read
                + _n(usage.cache_write_5m_tokens) * rates.cache_write_5m
                + _n(usage.cache_write_1h_tokens) * rates.cache_write_1h
            ) / MILLION
            if batch:
                tokens *= self.batch_discount
            fee = entry.per_request.get(WEB_SEARCH, Decimal(0))
            total = tokens + _n(usage.web_search_requests) * fee
            total = max(total, Decimal(0))
            return total.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def _n(count: int) -> Decimal:
    return Decimal(max(count, 0))


def _ends_on_separator(name: str, end: int) -> bool:
    if end == len(name):
        return True
    return name[end] in _SEPARATORS and _VERSION_GOES_ON.match(name, end) is None


def _stages(model: str) -> tuple[str, ...]:
    """Spellings of `model`, least to most normalised; () when it cannot be priced."""
    text = unquote(model.strip()).strip()
    if not text or not text.isascii():
        return ()
    raw = text.lower()
    # ARNs, `models/`, `publishers/google/models/`, `anthropic/`, `openai/`, ...
    prefix, _, bare = raw.rpartition("/")
    if _MODEL_WORD.search(prefix):
        return ()  # `claude-opus-4-1/claude-haiku-4-5`: which model is it?
    bare = bare or raw
    bare = _METHOD.sub("", bare)
    if match := _REGION.match(bare):
        bare = bare[match.end() :]
    bare = bare.removeprefix("anthropic.")
    normal = bare
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIXES:
            shorter = pattern.sub("", normal)
            if shorter and shorter != normal:
                normal, changed = shorter, True
    if normal.startswith("claude"):
        normal = _claude(normal)
    return tuple(dict.fromkeys((raw, bare, normal)))


def _claude(name: str) -> str:
    """OpenRouter dots, number-first names (`claude-4-opus`) and `-0` minors."""
    name = name.replace(".", "-")
    match = _CLAUDE_NUMBER_FIRST.match(name)
    if match and int(match.group(1)) >= 4:
        major, minor, family = match.groups()
        name = f"claude-{family}-{major}{minor}{name[match.end() :]}"
    return _CLAUDE_ZERO_MINOR.sub(r"\1", name)


@lru_cache(maxsize=8192)
def normalize_model(model: str) -> str:
    """The canonical spelling of a model id, as matched against price-table keys.

    Non-ASCII ids come back as given (trimmed, URL-decoded), never folded to ASCII.
    """
    stages = _stages(model)
    return stages[-1] if stages else unquote(model.strip()).strip()


def load_prices(path: Path) -> PriceTable:
    """Read and validate a price file; raises PriceError listing every mistake."""
    try:
        source = load_yaml(path)
    except ConfigError as e:
        raise PriceError(str(e)) from None
    return parse_prices(source)


class _Problems:
    """Located error lines of one price file, raised together."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.found: list[tuple[int, str]] = []

    def add(self, ypath: str, message: str) -> None:
        if not ypath:
            self.found.append((0, f"{self.source.path}: {message}"))
            return
        where = self.source.where(ypath)
        line = int(where.rpartition(":")[2]) if where != self.source.path else 0
        self.found.append((line, f"{where}: {ypath}: {message}"))

    def unknown(
        self, raw: Mapping[Any, Any], ypath: str, known: frozenset[str]
    ) -> None:
        names = ", ".join(sorted(known))
        for key in raw:
            if key not in known:
                self.add(join(ypath, key), f"unknown field {key!r} - known: {names}")

    def raise_if_any(self) -> None:
        if self.found:
            lines = [text for _, text in sorted(self.found, key=lambda f: f[0])]
            raise PriceError("\n".join(lines))


def _decimal(value: object) -> Decimal | None:
    """A finite number >= 0 from YAML (int, float or numeric string), exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not number.is_finite() or number < 0:
        return None
    return abs(number)


def parse_prices(source: Source) -> PriceTable:
    """Validate a loaded price file; raises PriceError with one line per mistake."""
    problems = _Problems(source)
    data = source.data
    if not isinstance(data, dict):
        problems.add("", f"expected a mapping with a 'models' field, got {data!r}")
        problems.raise_if_any()
    problems.unknown(data, "", _TOP_FIELDS)
    version = data.get("version", 1)
    if isinstance(version, bool) or version != 1:
        problems.add("version", f"expected 1, got {version!r}")
    batch_discount = DEFAULT_BATCH_DISCOUNT
    if "batch_discount" in data:
        value = data["batch_discount"]
        number = _decimal(value)
        if number is None or number > 1:
            message = f"expected a fraction from 0 to 1, got {value!r}"
            problems.add("batch_discount", message)
        else:
            batch_discount = number
    entries = _models(problems, data)
    problems.raise_if_any()
    return PriceTable(
        source=source.path,
        entries=MappingProxyType(entries),
        batch_discount=batch_discount,
    )


def _models(problems: _Problems, data: dict[Any, Any]) -> dict[str, PriceEntry]:
    if "models" not in data:
        problems.add("", "missing required field 'models'")
        return {}
    models = data["models"]
    if not isinstance(models, dict):
        message = f"expected a mapping of model ids to prices, got {models!r}"
        problems.add("models", message)
        return {}
    entries: dict[str, PriceEntry] = {}
    alias_owner: dict[str, str] = {}
    keys = {name for name in models if _is_id(name)}
    for name, item in models.items():
        ypath = join("models", name)
        if name not in keys:
            problems.add(ypath, f"expected a lowercase ASCII model id, got {name!r}")
            continue
        entry = _entry(problems, name, item, ypath)
        if entry is None:
            continue
        entries[name] = entry
    for key, entry in entries.items():
        for i, alias in enumerate(entry.aliases):
            owner = alias_owner.setdefault(alias, key)
            where = join(join(join("models", key), "aliases"), i)
            if alias in keys and alias != key:
                problems.add(where, f"alias {alias!r} is already the key of a model")
            elif owner != key:
                message = f"alias {alias!r} is already an alias of model {owner!r}"
                problems.add(where, message)
    return entries


def _is_id(value: object) -> bool:
    if not isinstance(value, str) or len(value) > _MAX_ID:
        return False
    return _ID.fullmatch(value) is not None


def _entry(
    problems: _Problems, key: str, item: object, ypath: str
) -> PriceEntry | None:
    if not isinstance(item, dict):
        problems.add(ypath, f"expected a mapping of prices, got {item!r}")
        return None
    problems.unknown(item, ypath, _MODEL_FIELDS)
    provider = item.get("provider", "other")
    if not isinstance(provider, str) or not _PROVIDER.fullmatch(provider):
        problems.add(
            join(ypath, "provider"),
            "expected a provider name such as anthropic, openai or gemini,"
            f" got {provider!r}",
        )
        provider = "other"
    aliases = _aliases(problems, item.get("aliases"), join(ypath, "aliases"))
    rates = _rates(problems, item, ypath, provider)
    long_path = join(ypath, "long_context")
    above, long_rates = _long_context(problems, item, long_path, provider)
    fees = _per_request(problems, item.get("per_request"), join(ypath, "per_request"))
    if rates is None:
        return None
    return PriceEntry(
        key=key,
        provider=provider,
        rates=rates,
        long_context_above=above,
        long_context=long_rates,
        per_request=MappingProxyType(fees),
        aliases=aliases,
    )


def _aliases(problems: _Problems, value: object, ypath: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.add(ypath, f"expected a list of model ids, got {value!r}")
        return ()
    found: list[str] = []
    for i, alias in enumerate(value):
        if _is_id(alias):
            found.append(alias)
        else:
            message = f"expected a lowercase ASCII model id, got {alias!r}"
            problems.add(join(ypath, i), message)
    return tuple(dict.fromkeys(found))


def _rates(
    problems: _Problems, raw: Mapping[Any, Any], ypath: str, provider: str
) -> Rates | None:
    """Rates with provider defaults for cache prices that are not given."""
    values: dict[str, Decimal] = {}
    complete = True
    for name in _RATE_FIELDS:
        if name not in raw:
            if name in _REQUIRED_RATES:
                problems.add(ypath, f"missing required field {name!r}")
                complete = False
            continue
        number = _decimal(raw[name])
        if number is None:
            problems.add(join(ypath, name), f"expected {_PER_MTOK}, got {raw[name]!r}")
            complete = False
        else:
            values[name] = number
    if not complete:
        return None
    base = values["input"]
    if provider == "anthropic":
        read, write_5m, write_1h = base / 10, base * Decimal("1.25"), base * 2
    else:
        read = write_5m = write_1h = base
    return Rates(
        input=base,
        output=values["output"],
        cache_read=values.get("cache_read", read),
        cache_write_5m=values.get("cache_write_5m", write_5m),
        cache_write_1h=values.get("cache_write_1h", write_1h),
    )


def _long_context(
    problems: _Problems, item: Mapping[Any, Any], ypath: str, provider: str
) -> tuple[int | None, Rates | None]:
    value = item.get("long_context")
    if value is None:
        return None, None
    if not isinstance(value, dict):
        problems.add(ypath, f"expected a mapping of long-context prices, got {value!r}")
        return None, None
    problems.unknown(value, ypath, _LONG_FIELDS)
    above = value.get("above_prompt_tokens")
    if "above_prompt_tokens" not in value:
        problems.add(ypath, "missing required field 'above_prompt_tokens'")
        above = None
    elif isinstance(above, bool) or not isinstance(above, int) or above < 1:
        problems.add(
            join(ypath, "above_prompt_tokens"),
            f"expected a whole number of prompt tokens >= 1, got {above!r}",
        )
        above = None
    rates = _rates(problems, value, ypath, provider)
    if above is None or rates is None:
        return None, None
    return above, rates


def _per_request(problems: _Problems, value: object, ypath: str) -> dict[str, Decimal]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(ypath, f"expected a mapping of per-request fees, got {value!r}")
        return {}
    problems.unknown(value, ypath, _PER_REQUEST_FIELDS)
    fees: dict[str, Decimal] = {}
    for name in _PER_REQUEST_FIELDS & value.keys():
        number = _decimal(value[name])
        if number is None:
            problems.add(
                join(ypath, name),
                f"expected a number of USD per request >= 0, got {value[name]!r}",
            )
        else:
            fees[name] = number
    return fees
