"""Errors raised on bad user input (data files, params, model directories)."""

from __future__ import annotations


class BedkdError(Exception):
    """A user-facing error: the message is one line naming the file and the field."""


class DataError(BedkdError):
    """A data file is missing, malformed or hostile."""


class ConfigError(BedkdError):
    """params.yaml (or a settings value) is invalid."""
