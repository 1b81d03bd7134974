"""Baseline (b) of scripts/bench.py: stream server-sent events, change nothing else.

Bare mitmproxy buffers a `text/event-stream` answer until it ends, so its time to
first token would be the whole stream. This addon streams those answers the same
way Tollgate does, so (b) and (c) differ only by Tollgate's own work.
"""

from mitmproxy import http


class StreamEvents:
    """Pass event streams on as their chunks arrive."""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None:
            return
        if "text/event-stream" in response.headers.get("content-type", ""):
            response.stream = True


addons = [StreamEvents()]
