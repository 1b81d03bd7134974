"""Which agent or SDK made a call, from its user agent; a small, fixed set of names."""

from collections.abc import Mapping

_BY_USER_AGENT = (
    ("claude-cli/", "claude-code"),
    ("claude-code", "claude-code"),
    ("codex", "codex"),
    ("geminicli/", "gemini-cli"),
    ("asyncanthropic/python", "anthropic-python"),
    ("anthropic/python", "anthropic-python"),
    ("anthropic/js", "anthropic-js"),
    ("asyncopenai/python", "openai-python"),
    ("openai/python", "openai-python"),
    ("openai/js", "openai-js"),
    ("google-genai-sdk", "google-genai"),
    ("curl/", "curl"),
    ("python-httpx/", "python-http"),
    ("python-requests/", "python-http"),
)
AGENTS = tuple(sorted({name for _, name in _BY_USER_AGENT} | {"other"}))


def detect_agent(headers: Mapping[str, str]) -> str:
    """A name from AGENTS for the client behind these request headers."""
    if "codex" in headers.get("originator", "").lower():
        return "codex"
    user_agent = headers.get("user-agent", "").lower()
    for needle, name in _BY_USER_AGENT:
        if needle in user_agent:
            return name
    return "other"


def detect_session(headers: Mapping[str, str], from_body: str | None) -> str | None:
    """The agent session: Claude Code's and Codex's headers, or the body's user id."""
    for name in ("x-claude-code-session-id", "session_id", "session-id"):
        value = headers.get(name)
        if value:
            return value[:128]
    return from_body
