"""The channel and registry names of one deployment, under its prefix.

Shared by every transport that addresses channels by name (the memory hub and
Redis use the same ones, so a prefix isolates tenants on either).
:class:`~kiki_events.redis.keys.Keys` adds the names only Redis uses (streams,
handoff).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Names"]


@dataclass(frozen=True)
class Names:
    """Channel and registry names, under one prefix (which isolates tenants).

    Run-scoped names carry the run id in a hash tag (``{run_id}``) so a Redis
    Cluster keeps a run's keys on one shard.
    """

    prefix: str = "kiki:"

    def run_channel(self, run_id: str) -> str:
        return f"{self.prefix}run:{{{run_id}}}"

    def thread_channel(self, thread_id: str) -> str:
        return f"{self.prefix}thread:{{{thread_id}}}"

    def lifecycle_channel(self) -> str:
        return f"{self.prefix}lifecycle"

    def control_channel(self, node: str | None = None) -> str:
        return f"{self.prefix}control" if node is None else f"{self.prefix}control:{node}"

    def node(self, name: str) -> str:
        """A node's heartbeat (expires when the node stops refreshing it)."""
        return f"{self.prefix}node:{name}"

    def run_info(self, run_id: str) -> str:
        return f"{self.prefix}runinfo:{{{run_id}}}"

    def thread_runs(self, thread_id: str) -> str:
        return f"{self.prefix}threadruns:{{{thread_id}}}"

    def thread_owner(self, thread_id: str) -> str:
        """The principal a thread belongs to (set once, if absent)."""
        return f"{self.prefix}threadowner:{{{thread_id}}}"
