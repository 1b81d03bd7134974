"""The `tollgate` command: check policies, issue keys, report spend from the ledger."""

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TollgateError

if TYPE_CHECKING:
    from .policy import Policy
    from .pricing import PriceTable

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except TollgateError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return code


def build_parser() -> argparse.ArgumentParser:
    from . import cli_keys, cli_reports

    parser = argparse.ArgumentParser(
        prog="tollgate", description="Meter, cap and report LLM API spend."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a policy file without starting anything",
        description="Validate a policy (and price table); every mistake is listed with"
        " its file, line and YAML path. Example: tollgate check policies/example.yaml",
    )
    check.add_argument("policy", type=Path)
    check.add_argument("--prices", type=Path, help="price table (default: shipped)")
    check.set_defaults(run=run_check)
    cli_keys.register(commands)
    cli_reports.register(commands)
    return parser


def run_check(args: argparse.Namespace) -> int:
    from .policy import load_policy
    from .pricing import DEFAULT_PRICES, load_prices

    problems = []
    prices = None
    try:
        prices = load_prices(args.prices or DEFAULT_PRICES)
    except TollgateError as e:
        problems.append(str(e))
    try:
        policy = load_policy(args.policy)
    except TollgateError as e:
        problems.append(str(e))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        count = sum(p.count("\n") + 1 for p in problems)
        print(
            f"Error: {count} problem{'s' if count != 1 else ''} found", file=sys.stderr
        )
        return 1
    assert prices is not None
    for warning in unpriced_allowed(policy, prices):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {policy.describe()}; {len(prices.entries)} prices from {prices.source}")
    return 0


def unpriced_allowed(policy: "Policy", prices: "PriceTable") -> list[str]:
    """Allow-listed model ids (not globs) the price table cannot price."""
    levels = [lv for lv in (policy.org, policy.default_limits) if lv is not None]
    levels += [*policy.teams.values(), *policy.tags.values()]
    levels += [u.limits for u in policy.users.values()]
    levels += [k.limits for k in policy.keys.values()]
    if policy.allow_unpriced_models:
        effect = "its calls are recorded at $0"
    else:
        effect = "its calls are refused where a budget applies"
    found = []
    for level in levels:
        for model in level.models or ():
            if "*" not in model and prices.resolve(model) is None:
                found.append(
                    f"{level.label} allows {model!r}, which has no price: {effect}"
                )
    return found


if __name__ == "__main__":
    sys.exit(main())
