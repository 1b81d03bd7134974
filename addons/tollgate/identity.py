"""Who is calling: credentials (virtual key, proxy login, provider key) to a Principal.

Identity comes only from secrets the caller presents, never from a header a client
may set freely. Secrets are hashed on arrival; only fingerprints leave this module.
"""

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from .policy import Key, Limits, Policy

VIRTUAL_PREFIX = "tg-"
CREDENTIAL_HEADERS = ("x-api-key", "authorization", "x-goog-api-key", "api-key")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller as the policy knows it."""

    user: str | None
    team: str | None
    key_alias: str | None
    fingerprint: str | None
    key: Key | None = None
    swap_key: bool = False
    refusal: str | None = None

    def levels(self, policy: Policy) -> list[Limits]:
        """The policy levels whose allow-lists and rate limits apply, widest first."""
        found: list[Limits] = []
        if policy.org is not None:
            found.append(policy.org)
        if self.team and self.team in policy.teams:
            found.append(policy.teams[self.team])
        if self.user and self.user in policy.users:
            found.append(policy.users[self.user].limits)
        elif self.user is None and policy.default_limits is not None:
            found.append(policy.default_limits)
        if self.key is not None:
            found.append(self.key.limits)
        return found


def fingerprint(secret: str) -> str:
    """Full SHA-256 hex of a secret, as stored in the policy."""
    # surrogateescape: a header's odd bytes still give a fingerprint, never an error
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def short(digest: str) -> str:
    """The short form kept in the ledger and logs."""
    return digest[:12]


def presented_secret(headers: Mapping[str, str]) -> str | None:
    """The provider credential in a request's headers, in the order SDKs send them.

    Only headers: Gemini's `?key=` is moved into `x-goog-api-key` before this runs.
    """
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if value:
            if name == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    continue
                return token.strip()
            return value.strip()
    return None


def proxy_secret(header: str | None) -> str | None:
    """The token of a `Proxy-Authorization: Basic` login (`user:token`)."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, _, token = decoded.partition(":")
    return token or None


def _find(policy: Policy, digest: str) -> Key | None:
    key = policy.keys.get(digest)
    if key is not None and hmac.compare_digest(key.sha256, digest):
        return key
    return None


def identify(policy: Policy, secret: str | None, proxy_token: str | None) -> Principal:
    """Map the presented credentials to a Principal, or to a refusal reason."""
    if proxy_token is not None:
        key = _find(policy, fingerprint(proxy_token))
        if key is None:
            return _refused("the proxy login is not a key this gateway knows")
        return _principal(policy, key, swap=False)
    if secret is None:
        if policy.unknown_callers == "refuse":
            return _refused("no API key was sent")
        return Principal(None, None, None, None)
    digest = fingerprint(secret)
    key = _find(policy, digest)
    if key is not None:
        return _principal(policy, key, swap=key.virtual)
    if secret.startswith(VIRTUAL_PREFIX):
        return _refused(f"unknown Tollgate key (fingerprint {short(digest)})")
    if policy.unknown_callers == "refuse":
        return _refused(f"this API key (fingerprint {short(digest)}) is not registered")
    return Principal(None, None, None, short(digest))


def _principal(policy: Policy, key: Key, *, swap: bool) -> Principal:
    user = policy.users.get(key.user)
    return Principal(
        user=key.user,
        team=user.team if user is not None else None,
        key_alias=key.key_alias,
        fingerprint=short(key.sha256),
        key=key,
        swap_key=swap,
    )


def _refused(reason: str) -> Principal:
    return Principal(None, None, None, None, refusal=reason)
