"""Redaction of text that reaches a client: error messages, error responses.

Stack traces stay in the server log; what a browser sees is a short message with
secrets masked. :func:`redact` is a pipeline of plain substitutions, cheap enough
to run on every error event (errors are rare; tokens never pass through here).
"""

from __future__ import annotations

import re

__all__ = ["MASK", "public_error", "redact"]

MASK = "***"

_MAX_CHARS = 500

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Credentials inside URLs: redis://user:pass@host, https://:token@host.
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):[^\s/@]*@"), rf"\1:{MASK}@"),
    # Authorization headers and bearer tokens.
    (re.compile(r"(?i)\b(authorization\s*[:=]\s*)(?:\w+\s+)?[^\s,;'\"]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {MASK}"),
    # key=value and key: value for anything that looks like a secret.
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
            r"|credentials?|session[_-]?id|cookie)[\w-]*)(['\"]?\s*[=:]\s*['\"]?)[^\s,;'\"&]+"
        ),
        rf"\1\2{MASK}",
    ),
    # Well-known key formats (OpenAI/Anthropic-style, GitHub, AWS, Slack).
    (re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{12,}"), rf"\1-{MASK}"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),
)


def redact(text: str, *, max_chars: int = _MAX_CHARS) -> str:
    """Mask secrets in ``text`` and keep only its first line, at most ``max_chars``.

    Only the first line survives because multi-line error text is usually a
    traceback or a dump of the offending input.
    """
    first = text.strip().split("\n", 1)[0]
    for pattern, replacement in _RULES:
        first = pattern.sub(replacement, first)
    if len(first) > max_chars:
        first = first[: max_chars - 1] + "…"
    return first


def public_error(exc: BaseException) -> str:
    """A generic client-facing message for an unexpected exception: its type only."""
    return f"internal error ({type(exc).__name__}); details are in the server log"
