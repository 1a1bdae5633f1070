"""What the commands share: the program name, the default configuration file, errors."""

from __future__ import annotations

import sys
from pathlib import Path

from ..redaction import redact_text

__all__ = ["DEFAULT_CONFIG", "PROG", "config_file", "fail"]

PROG = "kiki-events"

DEFAULT_CONFIG = Path("config/eventbus.yaml")
"""Used by ``serve`` and ``tail`` when it exists in the current directory and no ``--config`` is given."""


def config_file(given: Path | None) -> Path | None:
    """``--config``, else :data:`DEFAULT_CONFIG` if it exists, else ``None`` (built-in defaults)."""
    if given is None and DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    return given


def fail(message: str) -> int:
    """Print ``message`` (credentials masked) as the command's one line on stderr.

    Returns the exit code of a bad configuration (2).
    """
    print(f"{PROG}: error: {redact_text(message)}", file=sys.stderr)
    return 2
