"""Leases: a remote run or thread is followed while someone holds one."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["NO_LEASE", "Lease"]


class Lease:
    """Keeps a remote run (or thread) followed until :meth:`release` (idempotent)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


NO_LEASE = Lease(None)
"""The lease of something that needs none (a local run, a closed bridge)."""
