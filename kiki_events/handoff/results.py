"""What a handed-off task produced, as the requester sees it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, cast, get_args

from ..errors import HandoffFailedError
from .payload import load_payload

__all__ = ["HandoffResult", "HandoffStatus", "result_from"]

HandoffStatus: TypeAlias = Literal["success", "error", "interrupted", "cancelled", "dead_letter", "expired"]
"""Final status of a handed-off task: its run's status, or why it never ran to the end."""

_STATUSES = frozenset(get_args(HandoffStatus))


@dataclass(frozen=True)
class HandoffResult:
    """What a handed-off task produced."""

    request_id: str
    agent: str
    status: HandoffStatus
    run_id: str | None = None
    """The run on the serving node (the last one, if the task was run again)."""
    node: str | None = None
    """The node that ran it."""
    output: Any = None
    """The run's final state (messages restored), or ``None`` when it was too large."""
    text: str | None = None
    """Text of the last AI message of the final state."""
    error: str | None = None
    """Redacted error message when the run did not succeed."""
    truncated: bool = False
    """The final state was too large to send back (only ``text`` is given)."""

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def raise_for_status(self) -> HandoffResult:
        """Return ``self`` on success; otherwise raise :class:`HandoffFailedError`."""
        if self.status != "success":
            detail = f": {self.error}" if self.error else ""
            raise HandoffFailedError(
                f"agent {self.agent!r} ended with status {self.status}{detail}", status=self.status, run_id=self.run_id
            )
        return self


def result_from(request_id: str, agent: str, fields: Mapping[str, str]) -> HandoffResult:
    """The result that a ``result`` entry of a reply stream describes."""
    output: Any = None
    raw = fields.get("output")
    if raw:
        try:
            output = load_payload(json.loads(raw))
        except (ValueError, TypeError):  # a foreign writer: keep what we can
            output = None
    status = fields.get("status", "error")
    return HandoffResult(
        request_id=request_id,
        agent=agent,
        status=cast("HandoffStatus", status) if status in _STATUSES else "error",
        run_id=fields.get("run_id") or None,
        node=fields.get("node") or None,
        output=output,
        text=fields.get("text") if "text" in fields else None,
        error=fields.get("error") or None,
        truncated=fields.get("truncated") == "1",
    )
