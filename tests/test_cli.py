"""The `tollgate` command: check and keys, exact output."""

import hashlib
import re
from pathlib import Path

import pytest

from tollgate.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_check_reports_ok_when_policy_is_valid(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a")
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    assert main(["check", str(ROOT / "policies" / "example.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 2 teams, 3 users, 3 keys, 1 tag budgets from ")
    assert out.rstrip().endswith(
        "58 prices from " + str(ROOT / "addons/tollgate/prices.yaml")
    )


def test_check_lists_every_mistake_with_line_when_policy_is_broken(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text(
        "version: 1\n"
        "teams:\n"
        "  backend-eng:\n"
        "    max_budget: 2k\n"
        "    budget_duration: monthly\n"
        "users:\n"
        "  alice:\n"
        "    team: backend\n"
        "    rpm_limit: -1\n"
    )
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"{bad}:4: teams.backend-eng.max_budget: expected a number of USD >= 0, got"
        f" '2k'\n"
        f"{bad}:5: teams.backend-eng.budget_duration: expected a duration such as 1d,"
        f" 1w,"
        " 1mo, 30d or 12h, got 'monthly'\n"
        f"{bad}:8: users.alice.team: unknown team 'backend' - teams: backend-eng\n"
        f"{bad}:9: users.alice.rpm_limit: expected a whole number >= 1, got -1\n"
        "Error: 4 problems found\n"
    )


def test_keys_new_prints_key_once_with_matching_fingerprint_when_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keys", "new", "alice", "--alias", "alice-claude-code"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^  (tg-\S+)$", out, re.M)
    assert key is not None
    digest = hashlib.sha256(key.group(1).encode()).hexdigest()
    assert (
        f"  - key_alias: alice-claude-code\n    user: alice\n    key_sha256: {digest}\n"
        in out
    )
    assert out.count(key.group(1)) == 4  # the key line and three env lines


def test_every_command_has_help_and_is_in_readme_when_listed() -> None:
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert sub.description, name
        assert f"tollgate {name}" in readme, name


def test_check_warns_when_allow_list_names_a_model_without_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nallow_unpriced_models: false\n"
        "users:\n  ivan: {models: [claude-haiku-4-7, claude-sonnet-4-5, gpt-*]}\n"
    )
    assert main(["check", str(policy)]) == 0
    err = capsys.readouterr().err
    assert err == (
        "warning: user:ivan allows 'claude-haiku-4-7', which has no price: its calls"
        " are refused where a budget applies\n"
    )
