"""Every Redis key and channel name of one deployment, under its prefix."""

from __future__ import annotations

from dataclasses import dataclass

from ..transports.names import Names

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys(Names):
    """The channel and registry names of :class:`~kiki_events.transports.names.Names`,
    plus the streams (streams mode) and the handoff keys.
    """

    def run_stream(self, run_id: str) -> str:
        return f"{self.prefix}stream:{{{run_id}}}"

    def thread_stream(self, thread_id: str) -> str:
        """Announcements of the runs started on a thread (streams mode)."""
        return f"{self.prefix}threadstream:{{{thread_id}}}"

    def lifecycle_stream(self) -> str:
        """Lifecycle events of every run (streams mode)."""
        return f"{self.prefix}lifecyclestream"

    def control_stream(self, node: str | None = None) -> str:
        """Control messages for one node, or for every node (streams mode)."""
        return f"{self.prefix}controlstream" if node is None else f"{self.prefix}controlstream:{node}"

    def work_stream(self, agent: str) -> str:
        return f"{self.prefix}work:{agent}"

    def dead_letter_stream(self, agent: str) -> str:
        return f"{self.prefix}dead:{agent}"

    def agents(self, agent: str) -> str:
        return f"{self.prefix}agents:{agent}"

    def reply(self, request_id: str) -> str:
        return f"{self.prefix}reply:{{{request_id}}}"

    def done_marker(self, request_id: str) -> str:
        return f"{self.prefix}handled:{{{request_id}}}"
