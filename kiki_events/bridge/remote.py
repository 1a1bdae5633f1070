"""A remote run this node follows (:class:`RemoteRun`), and what its repair needs of the following.

Shared by :mod:`.follow` (which follows the runs) and :mod:`.repair` (which delivers
their events in order and repairs their gaps).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..events import StreamEvent
from ..transports.base import RunInfo

if TYPE_CHECKING:
    from ..core.runrecord import RunRecord

__all__ = ["READY_TIMEOUT", "FollowedRuns", "RemoteRun"]

READY_TIMEOUT = 2.0
"""Longest wait of :meth:`.Following.open_run` for a remote run to catch up."""


@dataclass(eq=False)
class RemoteRun:
    """A remote run this node follows, and where its delivery stands."""

    run_id: str
    owner: str | None
    """The node running it (``None`` until the registry or its first frame says)."""
    record: RunRecord | None = None
    """Its record here (``None`` until adopted)."""
    leases: int = 0
    keep_until: float = 0.0
    """Followed until then after the last lease was released (``interest_linger``)."""
    next_seq: int = 1
    """The seq to deliver next."""
    held: dict[int, StreamEvent] = field(default_factory=dict)
    """Events received ahead of ``next_seq`` (bounded), waiting for the gap to be filled."""
    gap_since: float | None = None
    """When the current gap was seen (or last made progress)."""
    gap_counted: bool = False
    """The current gap is one (``stats.gaps``): it opened after the first catch-up, so it
    is not live events merely arriving before the history a new reader asked for."""
    repair_since: float | None = None
    """When the replay or backfill in flight was asked for."""
    watching: bool = False
    synced: bool = False
    """Caught up since the subscription took effect (pub/sub: until a reconnect)."""
    adopting: bool = False
    attempts: int = 0
    """Repair requests made for the current gap."""
    misses: int = 0
    """Liveness checks in a row its owner missed."""
    final: RunInfo | None = None
    """The registry's entry once it said the run ended: from then on a catch-up is complete."""
    final_asked: float | None = None
    """When the last catch-up since the run is known to have ended was asked for."""
    final_attempts: int = 0
    """Catch-ups asked for since the run is known to have ended."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the first catch-up is done (or given up)."""
    since: float = field(default_factory=time.monotonic)
    """When this node began following it."""
    checked_seq: int = 0
    """``next_seq`` at the last liveness check (unchanged at the next: the run looks idle)."""
    task: asyncio.Task[None] | None = None


class FollowedRuns(Protocol):
    """What the repair of followed runs needs of their following (:class:`.Following`)."""

    @property
    def remote(self) -> Mapping[str, RemoteRun]:
        """The followed runs, by run id."""
        ...

    def update_syncing(self, remote: RemoteRun) -> None:
        """Mark the run's log as syncing, or not, as its state now says."""
        ...

    def kick(self, remote: RemoteRun) -> None:
        """Bring the run's subscription in line with its state (e.g. stop receiving a run that ended)."""
        ...
