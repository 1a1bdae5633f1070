"""Thread ownership across the cluster: who a thread belongs to, decided once for every node.

The registry settles it (set-if-absent on ``threadowner:{<thread>}``); what this node
already knows is checked first, and what the registry says is remembered here.
"""

from __future__ import annotations

from ..errors import RunNotFoundError, TransportError
from .context import BridgeContext

__all__ = ["Ownership"]


class Ownership:
    """Claims threads and answers whether a thread is someone's, with the registry's word."""

    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    async def claim_thread(self, thread_id: str, principal: str | None) -> None:
        """See :meth:`Bridge.claim_thread <kiki_events.bridge.Bridge.claim_thread>`."""
        ctx = self.ctx
        store = ctx.store
        known = store.owners.get(thread_id)
        if known is not None and known.principal != principal:
            raise RunNotFoundError(f"thread {thread_id!r} not found")
        try:
            owner = await ctx.transport.claim_thread(thread_id, principal)
        except TransportError:
            if known is not None and known.confirmed:
                return  # settled before: the registry keeps it at least as long as this node
            raise
        store.decide_owner(thread_id, owner.principal)
        if owner.principal != principal:
            raise RunNotFoundError(f"thread {thread_id!r} not found")

    async def owns(self, thread_id: str | None, principal: str | None) -> bool:
        """See :meth:`Bridge.owns <kiki_events.bridge.Bridge.owns>`."""
        if thread_id is None:
            return True
        ctx = self.ctx
        owner = await ctx.transport.thread_owner(thread_id)
        if owner is None:
            return ctx.store.owns(thread_id, principal)
        ctx.store.decide_owner(thread_id, owner.principal)
        return owner.principal == principal
