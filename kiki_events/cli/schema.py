"""``kiki-events schema``: the JSON Schema of the events (README.md, "Event reference")."""

from __future__ import annotations

import json
from typing import IO

from ..codec import event_json_schema

__all__ = ["schema"]


def schema(out: IO[str]) -> int:
    """Write the JSON Schema of the ``StreamEvent`` union to ``out``; the exit code (0)."""
    json.dump(event_json_schema(), out, indent=2)
    out.write("\n")
    out.flush()
    return 0
