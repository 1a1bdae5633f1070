"""Argument types and helpers the ``history`` subcommands share."""

from __future__ import annotations

import argparse
import urllib.parse

__all__ = ["count", "quote", "seq"]


def count(value: str) -> int:
    """A number from 1 to 10,000 (``--limit``)."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 10000, got {value!r}")
    return int(value)


def seq(value: str) -> int:
    """A seq: 0 or more, in digits 0-9."""
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise argparse.ArgumentTypeError(f"expected a seq (0 or more, in digits 0-9), got {value!r}")
    return int(value)


def quote(value: str) -> str:
    """``value`` as one path segment of a URL."""
    return urllib.parse.quote(value, safe="")
