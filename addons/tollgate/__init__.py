"""Tollgate: meter, cap and report LLM API spend from inside mitmproxy."""

__version__ = "0.1.0"
