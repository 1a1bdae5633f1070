"""What the bridge's parts share: the transport, the bus, the run store, the settings, the counters.

The :class:`~kiki_events.bridge.Bridge` builds one :class:`BridgeContext` and hands it to
each of its parts (they never see the bridge itself), along with the other parts each
one works with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..transports.base import ControlMessage, Transport

if TYPE_CHECKING:
    from ..core.bus import EventBus
    from ..core.manager import RunManager
    from ..core.runrecord import RunRecord
    from ..core.store import RunStore

__all__ = ["BridgeContext", "BridgeStats", "Spawn"]

Spawn = Callable[[Awaitable[Any], str], asyncio.Task[Any] | None]
"""Runs a coroutine in a supervised task named as given (cancelled on close); ``None`` once closed."""


@dataclass
class BridgeStats:
    """Counters of one bridge (the transport has its own: ``bridge.transport.stats``)."""

    delivered: int = 0
    """Remote run events delivered into the local bus."""
    duplicates: int = 0
    """Remote events received more than once (dropped)."""
    gaps: int = 0
    """Gaps seen in remote runs."""
    repaired: int = 0
    """Gaps filled by a replay or backfill before the repair timeout."""
    missed: int = 0
    """``missed`` notices sent to readers."""
    broadcasts: int = 0
    """Remote lifecycle events offered to topic subscribers."""
    control_in: int = 0
    control_errors: int = 0


@dataclass(eq=False)
class BridgeContext:
    """The bridge's shared state, as its parts see it."""

    transport: Transport
    bus: EventBus
    store: RunStore
    runs: RunManager
    stats: BridgeStats
    spawn: Spawn
    """Runs background work of a part (see :data:`Spawn`)."""
    running: Callable[[], bool]
    """Whether the bridge is running (started, not closed)."""
    linger: float
    """``eventbus.subscribe.interest_linger``: how long a run or thread stays followed after its last lease."""
    repair_timeout: float
    """``eventbus.subscribe.repair_timeout``."""
    lookup_wait: float = 1.0
    """How long a run nobody here knows is looked up in the registry before it counts as unknown."""

    @property
    def node(self) -> str:
        """This node's name."""
        return self.transport.node

    def is_local(self, record: RunRecord) -> bool:
        """Whether the run executes on this node (or nobody says it runs elsewhere)."""
        return record.node is None or record.node == self.node or self.runs.is_local(record.run_id)

    async def send_control(self, op: str, payload: Mapping[str, Any] | None, node: str | None) -> None:
        """Send a control message to ``node`` (``None``: every node, this one excluded).

        Raises:
            TransportError: it could not be sent now.
        """
        await self.transport.send_control(ControlMessage(op, self.node, dict(payload or {})), node)
