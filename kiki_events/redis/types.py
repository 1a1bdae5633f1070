"""The redis-py types other folders name in annotations (import them under ``TYPE_CHECKING``).

Only :mod:`kiki_events.redis` imports ``redis``; the handoff and the composition root
name a client through this module.
"""

from redis.asyncio import Redis as Redis
from redis.asyncio.client import Pipeline as Pipeline

__all__ = ["Pipeline", "Redis"]
