"""`tollgate keys new`: a virtual key, shown once, stored only as a fingerprint."""

import argparse
import secrets
from typing import Any

from .identity import VIRTUAL_PREFIX, fingerprint


def register(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="issue virtual keys",
        description="Issue virtual keys."
        " Example: tollgate keys new alice --alias laptop",
    )
    actions = keys.add_subparsers(title="actions", metavar="ACTION")
    new = actions.add_parser(
        "new",
        help="print a new virtual key and the policy lines for it",
        description="Print a new virtual key once, the lines to add under `keys:` in"
        " the policy, and what the developer sets. Example:"
        " tollgate keys new alice --alias alice-claude-code",
    )
    new.add_argument("user", help="the policy user the key belongs to")
    new.add_argument("--alias", help="key_alias (default: USER-key)")
    new.add_argument(
        "--anthropic-url",
        default="http://127.0.0.1:4000",
        help="the reverse-mode gateway for Anthropic (default: %(default)s)",
    )
    new.add_argument(
        "--openai-url",
        default="http://127.0.0.1:4001",
        help="the reverse-mode gateway for OpenAI (default: %(default)s)",
    )
    new.add_argument(
        "--proxy-url",
        default="http://127.0.0.1:8080",
        help="the forward-proxy gateway (default: %(default)s)",
    )
    new.set_defaults(run=run_new)


def run_new(args: argparse.Namespace) -> int:
    key = VIRTUAL_PREFIX + secrets.token_urlsafe(32)
    alias = args.alias or f"{args.user}-key"
    anthropic = args.anthropic_url.rstrip("/")
    openai = args.openai_url.rstrip("/")
    print(f"""New virtual key for {args.user} (shown once; Tollgate keeps its hash):

  {key}

Add to the policy under `keys:`:

  - key_alias: {alias}
    user: {args.user}
    key_sha256: {fingerprint(key)}

The developer sets, with gateways in reverse mode (one per provider):

  Claude Code / Anthropic SDK:  ANTHROPIC_BASE_URL={anthropic}  ANTHROPIC_API_KEY={key}
  OpenAI SDK:                   OPENAI_BASE_URL={openai}/v1  OPENAI_API_KEY={key}
  Codex CLI (config.toml):      base_url = "{openai}/v1", env_key = "OPENAI_API_KEY"

or, through the forward proxy, keeping the real provider URLs:

  HTTPS_PROXY={args.proxy_url.rstrip("/")}  ANTHROPIC_API_KEY={key}
  Node clients (Claude Code):   NODE_EXTRA_CA_CERTS=~/.mitmproxy/mitmproxy-ca-cert.pem
  Python, Rust clients:  SSL_CERT_FILE=a bundle of the public roots and that CA""")
    return 0
