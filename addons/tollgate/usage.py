"""The provider-neutral shape of token usage that pricing and the ledger work with."""

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """Tokens of one call, normalised across providers.

    `input_tokens` is only the input billed at the base input price; cache reads and
    writes have their own fields, so the whole prompt is their sum. `output_tokens` is
    all output billed at the output price, reasoning included; `reasoning_tokens` is
    the part of it that was reasoning.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    estimated: bool = False

    @property
    def prompt_tokens(self) -> int:
        """Every input token of the request, cached or not (tier thresholds use it)."""
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


MAX_COUNT = 10**12


def count(value: object) -> int:
    """A token count from untrusted JSON: non-negative int, anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return min(int(value), MAX_COUNT)
        return 0
    return min(max(value, 0), MAX_COUNT)


def total(*counts: int) -> int:
    """A sum of counts, held to the same bound as each count."""
    return min(sum(counts), MAX_COUNT)
