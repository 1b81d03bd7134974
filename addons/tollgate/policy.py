"""The policy file: who may call, which models, which budgets and limits, validated.

`parse_policy` turns YAML into frozen objects and reports every mistake with its file,
line, YAML path and value. Nothing here enforces anything: budgets.py and limits.py do.
"""

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import PolicyError
from .validate import Checker
from .windows import Duration, parse_duration
from .yamlsrc import Source, join, load_yaml

DEFAULT_THRESHOLDS = (Decimal("0.5"), Decimal("0.8"), Decimal("1"))
DEFAULT_POLICY = Path(__file__).parent / "default_policy.yaml"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCOPE_FIELDS = {
    "max_budget",
    "budget_duration",
    "models",
    "rpm_limit",
    "tpm_limit",
    "alert_thresholds",
    "model_max_budget",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Budget, allow-list and rate limits of one level (org, team, user, key, tag)."""

    kind: str
    name: str
    max_budget: Decimal | None = None
    budget_duration: Duration = Duration(1, "mo")
    models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    alert_thresholds: tuple[Decimal, ...] = DEFAULT_THRESHOLDS
    model_max_budget: tuple[tuple[str, Decimal], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    name: str
    team: str | None
    limits: Limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """A credential the gateway knows, stored as the SHA-256 of the secret."""

    key_alias: str
    user: str
    sha256: str
    virtual: bool
    limits: Limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    url: str
    format: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    source: str
    timezone: ZoneInfo
    unknown_callers: str = "allow"
    allow_unpriced_models: bool = True
    on_ledger_error: str = "keep_serving"
    bytes_per_token: int = 3
    default_max_output_tokens: int = 4096
    provider_keys: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    azure_deployments: dict[str, str] = field(default_factory=dict)
    org: Limits | None = None
    default_limits: Limits | None = None
    teams: dict[str, Limits] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)
    tags: dict[str, Limits] = field(default_factory=dict)
    webhooks: tuple[Webhook, ...] = ()

    def describe(self) -> str:
        return (
            f"{len(self.teams)} teams, {len(self.users)} users, {len(self.keys)} keys,"
            f" {len(self.tags)} tag budgets from {self.source}"
        )


_TOP = {
    "version",
    "timezone",
    "unknown_callers",
    "allow_unpriced_models",
    "on_ledger_error",
    "reservation",
    "alert_thresholds",
    "alert_webhooks",
    "providers",
    "hosts",
    "azure_deployments",
    "org",
    "default_budget",
    "teams",
    "users",
    "keys",
    "tags",
}


def load_policy(path: Path, environ: dict[str, str] | None = None) -> Policy:
    """Read and validate a policy file; raises PolicyError listing every mistake."""
    try:
        source = load_yaml(path)
    except PolicyError:
        raise
    except Exception as e:
        raise PolicyError(str(e)) from None
    return parse_policy(
        source, environ=dict(os.environ) if environ is None else environ
    )


def parse_policy(source: Source, *, environ: dict[str, str]) -> Policy:
    check = Checker(source)
    if source.data is None or source.data == {}:
        # An editor that truncates before writing must not lift every limit.
        raise PolicyError(
            f"{source.path}: the policy is empty; start it with `version: 1`"
        )
    raw = check.mapping(source.data, "", _TOP)
    thresholds = check.fractions(raw.get("alert_thresholds"), "alert_thresholds")
    defaults = thresholds or DEFAULT_THRESHOLDS
    _check_version(check, raw.get("version"))
    zone = _zone(check, raw.get("timezone"))

    teams = {
        name: _limits(check, "team", name, item, ypath, defaults, {"team_alias"})
        for name, ypath, item in check.entries(raw.get("teams"), "teams")
    }
    users = {
        name: _user(check, name, item, ypath, defaults, teams)
        for name, ypath, item in check.entries(raw.get("users"), "users")
    }
    keys = _keys(check, raw.get("keys"), defaults, users)
    tags = {
        name: _limits(check, "tag", name, item, ypath, defaults)
        for name, ypath, item in check.entries(raw.get("tags"), "tags")
    }
    org = (
        _limits(check, "org", "org", raw["org"], "org", defaults)
        if "org" in raw
        else None
    )
    default_limits = None
    if "default_budget" in raw:
        default_limits = _limits(
            check, "user", "default", raw["default_budget"], "default_budget", defaults
        )
    reservation = check.mapping(
        raw.get("reservation"),
        "reservation",
        {"bytes_per_token", "default_max_output_tokens"},
    )

    policy = Policy(
        source=source.path,
        timezone=zone,
        unknown_callers=check.choice(
            raw.get("unknown_callers"), "unknown_callers", ("allow", "refuse")
        ),
        allow_unpriced_models=_flag(check, raw, "allow_unpriced_models", default=False),
        on_ledger_error=check.choice(
            raw.get("on_ledger_error"),
            "on_ledger_error",
            ("keep_serving", "fail_closed"),
        ),
        bytes_per_token=check.count(
            reservation.get("bytes_per_token"), "reservation.bytes_per_token"
        )
        or 3,
        default_max_output_tokens=check.count(
            reservation.get("default_max_output_tokens"),
            "reservation.default_max_output_tokens",
        )
        or 4096,
        provider_keys=_provider_keys(check, raw.get("providers"), environ),
        hosts=_hosts(check, raw.get("hosts")),
        azure_deployments=_deployments(check, raw.get("azure_deployments")),
        org=org,
        default_limits=default_limits,
        teams=teams,
        users=users,
        keys=keys,
        tags=tags,
        webhooks=_webhooks(check, raw.get("alert_webhooks")),
    )
    check.raise_if_failed(PolicyError)
    return policy


def _check_version(check: Checker, value: object) -> None:
    if value is not None and value != 1:
        check.fail("version", f"expected 1, got {value!r}")


def _zone(check: Checker, value: object) -> ZoneInfo:
    if value is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        check.fail("timezone", f"expected an IANA time zone such as UTC, got {value!r}")
        return ZoneInfo("UTC")


def _flag(check: Checker, raw: dict[str, Any], name: str, *, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        check.fail(name, f"expected true or false, got {value!r}")
        return default
    return value


def _limits(
    check: Checker,
    kind: str,
    name: str,
    value: object,
    ypath: str,
    thresholds: tuple[Decimal, ...],
    extra: set[str] = frozenset(),  # type: ignore[assignment]
) -> Limits:
    raw = check.mapping(value, ypath, _SCOPE_FIELDS | extra)
    duration = check.parsed(
        raw.get("budget_duration"),
        join(ypath, "budget_duration"),
        parse_duration,
        "a duration such as 1d, 1w, 1mo, 30d or 12h",
    )
    per_model = []
    for pattern, mpath, amount in check.entries(
        raw.get("model_max_budget"), join(ypath, "model_max_budget")
    ):
        usd = check.usd(amount, mpath)
        if usd is not None:
            per_model.append((pattern, usd))
    return Limits(
        kind=kind,
        name=name,
        max_budget=check.usd(raw.get("max_budget"), join(ypath, "max_budget")),
        budget_duration=duration or Duration(1, "mo"),
        models=check.strings(raw.get("models"), join(ypath, "models")),
        rpm_limit=check.count(raw.get("rpm_limit"), join(ypath, "rpm_limit")),
        tpm_limit=check.count(raw.get("tpm_limit"), join(ypath, "tpm_limit")),
        alert_thresholds=check.fractions(
            raw.get("alert_thresholds"), join(ypath, "alert_thresholds")
        )
        or thresholds,
        model_max_budget=tuple(per_model),
    )


def _user(
    check: Checker,
    name: str,
    value: object,
    ypath: str,
    thresholds: tuple[Decimal, ...],
    teams: dict[str, Limits],
) -> User:
    raw = value if isinstance(value, dict) else {}
    team = raw.get("team")
    if team is not None and team not in teams:
        known = ", ".join(sorted(teams)) or "none defined"
        check.fail(join(ypath, "team"), f"unknown team {team!r} - teams: {known}")
    limits = _limits(check, "user", name, value, ypath, thresholds, {"team"})
    return User(name=name, team=str(team) if team is not None else None, limits=limits)


def _keys(
    check: Checker,
    value: object,
    thresholds: tuple[Decimal, ...],
    users: dict[str, User],
) -> dict[str, Key]:
    if value is None:
        return {}
    if not isinstance(value, list):
        check.fail("keys", f"expected a list of keys, got {value!r}")
        return {}
    keys: dict[str, Key] = {}
    fields = {"key_alias", "user", "key_sha256", "type"}
    for i, item in enumerate(value):
        ypath = join("keys", i)
        raw = item if isinstance(item, dict) else {}
        alias = raw.get("key_alias")
        if not isinstance(alias, str) or not alias:
            check.fail(join(ypath, "key_alias"), f"expected a name, got {alias!r}")
            alias = f"key-{i}"
        user = raw.get("user")
        if user not in users:
            known = ", ".join(sorted(users)) or "none defined"
            check.fail(join(ypath, "user"), f"unknown user {user!r} - users: {known}")
        digest = str(raw.get("key_sha256", "")).lower()
        if not _SHA256.match(digest):
            check.fail(
                join(ypath, "key_sha256"),
                "expected 64 hex digits (tollgate keys new prints them),"
                f" got {raw.get('key_sha256')!r}",
            )
        elif digest in keys:
            check.fail(
                join(ypath, "key_sha256"), f"same key as {keys[digest].key_alias!r}"
            )
        kind = check.choice(
            raw.get("type"), join(ypath, "type"), ("virtual", "provider")
        )
        limits = _limits(check, "key", alias, item, ypath, thresholds, fields)
        keys[digest] = Key(
            key_alias=alias,
            user=str(user),
            sha256=digest,
            virtual=kind == "virtual",
            limits=limits,
        )
    return keys


def _provider_keys(
    check: Checker, value: object, environ: dict[str, str]
) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, ypath, item in check.entries(value, "providers"):
        raw = check.mapping(item, ypath, {"api_key"})
        key = check.env_text(raw.get("api_key"), join(ypath, "api_key"), environ)
        if key:
            found[name] = key
    return found


def _hosts(check: Checker, value: object) -> dict[str, str]:
    found: dict[str, str] = {}
    for host, ypath, provider in check.entries(value, "hosts"):
        if provider not in ("anthropic", "openai", "gemini"):
            check.fail(ypath, f"expected anthropic, openai or gemini, got {provider!r}")
            continue
        found[host.lower()] = str(provider)
    return found


def _deployments(check: Checker, value: object) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, ypath, model in check.entries(value, "azure_deployments"):
        if not isinstance(model, str) or not model.strip():
            check.fail(
                ypath, f"expected the model id the deployment serves, got {model!r}"
            )
            continue
        found[name] = model.strip()
    return found


def _webhooks(check: Checker, value: object) -> tuple[Webhook, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        check.fail("alert_webhooks", f"expected a list of webhooks, got {value!r}")
        return ()
    hooks = []
    for i, item in enumerate(value):
        ypath = join("alert_webhooks", i)
        raw = check.mapping(item, ypath, {"url", "format"})
        url = raw.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            check.fail(join(ypath, "url"), f"expected an http(s) URL, got {url!r}")
            continue
        fmt = check.choice(raw.get("format"), join(ypath, "format"), ("slack", "json"))
        hooks.append(Webhook(url=url, format=fmt))
    return tuple(hooks)
