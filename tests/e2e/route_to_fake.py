"""Test-only addon: sends forward-proxy traffic for provider hosts to the fake provider.

Loaded after addons/budget.py, so Tollgate sees the real host first; then the
connection goes to `TOLLGATE_FAKE_UPSTREAM` (host:port) instead of the internet.
"""

import os

from mitmproxy import http

PROVIDER_HOSTS = (
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
)


class RouteToFake:
    def __init__(self) -> None:
        host, _, port = os.environ["TOLLGATE_FAKE_UPSTREAM"].partition(":")
        self.host, self.port = host, int(port)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host in PROVIDER_HOSTS:
            flow.request.scheme = "http"
            flow.request.host = self.host
            flow.request.port = self.port


addons = [RouteToFake()]
