"""Exceptions raised by Tollgate.

TollgateError
├── ConfigError        a policy or price file is wrong (file, line, path, value)
│   ├── PolicyError    the policy file
│   └── PriceError     the price table
└── LedgerError        the DuckDB ledger cannot be opened or written
"""


class TollgateError(Exception):
    """Base of every error Tollgate raises on purpose."""


class ConfigError(TollgateError):
    """A configuration file failed validation; the message says where and why."""


class PolicyError(ConfigError):
    """The policy file is invalid."""


class PriceError(ConfigError):
    """The price table is invalid."""


class LedgerError(TollgateError):
    """The ledger cannot be opened, read or written."""
