"""Redaction of text that leaves the process: error messages, URLs, payloads.

Stack traces never leave; messages keep their gist with anything that looks like a
credential masked.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact_error", "redact_message", "redact_text", "redact_url"]

MASK = "***"

_PATTERNS = (
    # Authorization: Bearer xyz / Basic xyz
    re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/=-]{6,})"),
    # key=value / key: value pairs whose key names a secret; a quoted value is masked up
    # to its closing quote (spaces included), an unquoted one with its scheme
    # ("Authorization: Bearer xyz" becomes "Authorization: ***"). "tokens: 42" and "author: x" are not secrets.
    re.compile(
        r"(?i)\b((?:[a-z0-9_-]*?)(?:password|passwd|pwd|secret|token(?!s)|api[_-]?key|apikey|access[_-]?key|"
        r"private[_-]?key|credential|auth(?!ors?\b|orit)|session[_-]?id|cookie)[a-z0-9_-]*)"
        r"([\"']?\s*[=:]\s*(?P<quote>[\"'])?)"
        r"((?(quote)(?:(?!(?P=quote))[^\n])+|(?:(?:bearer|basic|digest)\s+)?[^\s,;&\"'}]+))"
    ),
    # scheme://user:password@host
    re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*)(:)([^/\s@]+)(?=@)"),
    # well-known key shapes (OpenAI/Anthropic/Langfuse/GitHub/AWS)
    re.compile(
        r"()()\b((?:sk|pk|rk)-[A-Za-z0-9_-]{8,}|(?:sk|pk)-lf-[A-Za-z0-9-]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16})"
    ),
)
_MAX_MESSAGE = 500
_URL_PASSWORD = _PATTERNS[2]


def redact_text(text: str) -> str:
    """Mask credentials in ``text`` (``password=…``, bearer tokens, URL passwords, API keys)."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return text


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:***@host``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", url)


def redact_message(error: BaseException, *, max_chars: int = _MAX_MESSAGE) -> str:
    """``error``'s message alone, client-safe: one line, masked, at most ``max_chars`` (may be empty).

    For a field beside the type's name (``ErrorEvent.message`` next to ``error_type``),
    so that a reader joining them sees the type once.
    """
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not break error reporting
        text = ""
    message = redact_text(" ".join(text.split()))
    if len(message) > max_chars:
        message = message[: max(max_chars - 1, 0)] + "…"
    return message


def redact_error(error: BaseException, *, max_chars: int = _MAX_MESSAGE) -> str:
    """A client-safe one-line description of ``error``: type and masked message, no trace."""
    message = redact_message(error, max_chars=max_chars)
    name = type(error).__name__
    return f"{name}: {message}" if message else name
