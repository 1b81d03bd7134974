"""Test-only addon: sends every forward-proxy request to the fake provider.

Loaded after addons/budget.py, so Tollgate sees the host the client asked for;
then nothing leaves loopback, whatever that host is.
"""

import os

from mitmproxy import http


class RouteAllToFake:
    def __init__(self) -> None:
        host, _, port = os.environ["TOLLGATE_FAKE_UPSTREAM"].partition(":")
        self.host, self.port = host, int(port)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.scheme = "http"
        flow.request.host = self.host
        flow.request.port = self.port


addons = [RouteAllToFake()]
