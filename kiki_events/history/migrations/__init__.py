"""The schema of the event store as versioned SQL files, one folder per backend.

``<backend>/NNNN_<what>.sql`` is migration ``NNNN``; a database records the ones
applied in its ``schema_version`` table. A new migration is a new file with the
next number (never edit one that shipped).
"""

from __future__ import annotations

import re
from importlib import resources

from ...errors import StoreError

__all__ = ["SCHEMA_TABLE", "Migration", "migrations"]

SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)
"""The table recording the migrations applied (the same in both dialects)."""

_NAME = re.compile(r"^([0-9]{4})_([a-z0-9_]+)\.sql$")

Migration = tuple[int, str, str]
"""``(version, name, sql)``."""


def migrations(backend: str) -> list[Migration]:
    """Every migration of ``backend`` (``sqlite`` or ``postgres``), in version order."""
    folder = resources.files(__name__).joinpath(backend)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"the {backend} migrations are not numbered 1, 2, 3 …: {versions}")
    return found


def statements(sql: str) -> list[str]:
    """The statements of a migration file (split on ``;`` at line ends; comments dropped)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";\n") if part.strip().rstrip(";")]
