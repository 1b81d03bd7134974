"""Policy files: what parses, and the exact message for each mistake."""

from decimal import Decimal
from pathlib import Path

import pytest

from tollgate.errors import ConfigError, PolicyError
from tollgate.identity import fingerprint
from tollgate.policy import Policy, load_policy, parse_policy
from tollgate.windows import Duration
from tollgate.yamlsrc import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {"ANTHROPIC_API_KEY": "sk-ant-real", "OPENAI_API_KEY": "sk-real"}


def parse(text: str, environ: dict[str, str] | None = None) -> Policy:
    return parse_policy(parse_yaml(text, source="p.yaml"), environ=environ or ENV)


def test_example_policy_loads_when_environment_has_provider_keys() -> None:
    policy = load_policy(ROOT / "policies" / "example.yaml", environ=ENV)
    assert policy.teams["backend-eng"].max_budget == Decimal(2000)
    alice = policy.users["alice"]
    assert (alice.team, alice.limits.max_budget, alice.limits.rpm_limit) == (
        "backend-eng",
        Decimal(100),
        100,
    )
    assert alice.limits.tpm_limit == 1_000_000
    assert alice.limits.budget_duration == Duration(1, "mo")
    assert policy.tags["project:payments-refactor"].alert_thresholds == (
        Decimal("0.5"),
        Decimal("0.9"),
    )
    assert policy.provider_keys == {"anthropic": "sk-ant-real", "openai": "sk-real"}
    assert policy.unknown_callers == "refuse"


def test_default_policy_refuses_nothing_when_loaded() -> None:
    policy = load_policy(ROOT / "policies" / "default.yaml", environ={})
    assert (policy.unknown_callers, policy.allow_unpriced_models) == ("allow", True)
    assert not (
        policy.org or policy.teams or policy.users or policy.keys or policy.tags
    )


def test_key_entry_maps_fingerprint_when_listed() -> None:
    digest = fingerprint("tg-secret")
    policy = parse(
        "users: {bob: {}}\nkeys:\n"
        f"  - {{key_alias: b, user: bob, key_sha256: {digest}}}\n"
    )
    key = policy.keys[digest]
    assert (key.key_alias, key.user, key.virtual) == ("b", "bob", True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "teams:\n  backend-eng:\n    max_budget: 2k\n",
            "p.yaml:3: teams.backend-eng.max_budget: expected a number of USD >= 0,"
            " got '2k'",
        ),
        (
            "users:\n  alice:\n    budget_duration: monthly\n",
            "p.yaml:3: users.alice.budget_duration: expected a duration such as 1d,"
            " 1w, 1mo,"
            " 30d or 12h, got 'monthly'",
        ),
        (
            "users:\n  alice:\n    team: nope\n",
            "p.yaml:3: users.alice.team: unknown team 'nope' - teams: none defined",
        ),
        (
            "users:\n  alice:\n    rpm_limit: 0\n",
            "p.yaml:3: users.alice.rpm_limit: expected a whole number >= 1, got 0",
        ),
        (
            "timezone: Mars/Olympus\n",
            "p.yaml:1: timezone: expected an IANA time zone such as UTC, got"
            " 'Mars/Olympus'",
        ),
        (
            "unknown_callers: maybe\n",
            "p.yaml:1: unknown_callers: expected one of allow, refuse, got 'maybe'",
        ),
        (
            "providers:\n  openai:\n    api_key: ${NOPE_KEY}\n",
            "p.yaml:3: providers.openai.api_key: environment variable NOPE_KEY is not"
            " set",
        ),
        (
            "keys:\n  - key_alias: k\n    user: ghost\n    key_sha256: abc\n",
            "p.yaml:3: keys[0].user: unknown user 'ghost' - users: none defined\n"
            "p.yaml:4: keys[0].key_sha256: expected 64 hex digits (tollgate keys new"
            " prints"
            " them), got 'abc'",
        ),
        (
            "org:\n  max_budgett: 5\n",
            "p.yaml:2: org.max_budgett: unknown field 'max_budgett' - known:"
            " alert_thresholds,"
            " budget_duration, max_budget, model_max_budget, models, rpm_limit,"
            " tpm_limit",
        ),
        (
            "tags:\n  t:\n    alert_thresholds: [0.5, 12]\n",
            "p.yaml:3: tags.t.alert_thresholds[1]: expected a fraction in (0, 10],"
            " got 12",
        ),
        (
            "alert_webhooks:\n  - url: ftp://x\n",
            "p.yaml:2: alert_webhooks[0].url: expected an http(s) URL, got 'ftp://x'",
        ),
        (
            "teams: [a, b]\n",
            "p.yaml:1: teams: expected a mapping of names, got ['a', 'b']",
        ),
        ("version: 2\n", "p.yaml:1: version: expected 1, got 2"),
        (
            "azure_deployments:\n  prod: [gpt-4o]\n",
            "p.yaml:2: azure_deployments.prod: expected the model id the deployment"
            " serves, got ['gpt-4o']",
        ),
        (
            "a: [\n",
            "p.yaml:2: invalid YAML: expected the node content, but found '<stream"
            " end>'",
        ),
    ],
    ids=[
        "usd",
        "duration",
        "team",
        "rpm",
        "timezone",
        "choice",
        "env",
        "key",
        "unknown-field",
        "threshold",
        "webhook",
        "mapping",
        "version",
        "azure",
        "syntax",
    ],
)
def test_policy_error_names_file_line_path_and_value_when_invalid(
    text: str, message: str
) -> None:
    with pytest.raises(Exception) as caught:
        parse(text)
    assert str(caught.value) == message


def test_policy_errors_listed_by_line_when_file_has_several(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\nteams:\n  be:\n    max_budget: -20\nusers:\n  al:\n    team: be\n"
        "    tpm_limit: lots\n    models: claude\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path, environ={})
    assert str(caught.value).splitlines() == [
        f"{path}:4: teams.be.max_budget: expected a number of USD >= 0, got -20",
        f"{path}:8: users.al.tpm_limit: expected a whole number >= 1, got 'lots'",
        f"{path}:9: users.al.models: expected a list of names, got 'claude'",
    ]


def test_policy_error_says_unreadable_when_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nope.yaml", environ={})
    assert (
        str(caught.value)
        == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    )


def test_policy_refused_naming_both_lines_when_a_key_is_given_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("version: 1\nusers:\n  alice: {max_budget: 5}\nusers:\n  bob: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert str(caught.value) == (
        f"{path}:4: users: given twice (first on line 2); YAML keeps only the"
        " last, so remove one"
    )


def test_policy_refused_before_expanding_when_it_uses_yaml_aliases(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bomb.yaml"
    lines = ["version: 1", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}]"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert str(caught.value) == (
        f"{path}:3: YAML aliases (*a) are not accepted; write the value out"
    )


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_policy_refused_when_file_is_empty(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == (
        f"{path}: the policy is empty; start it with `version: 1`"
    )
