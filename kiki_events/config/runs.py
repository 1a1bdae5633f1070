"""Runs, the callback handler, and agents across nodes (``runs``, ``handler``, ``handoff``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from .values import Duration, KeyProblem, Section

if TYPE_CHECKING:
    from .eventbus import EventBusSettings

__all__ = ["CheckpointerSettings", "HandlerSettings", "HandoffSettings", "RunSettings", "resolve_concurrency"]


class CheckpointerSettings(Section):
    """Where threads keep their state between runs (given to every served graph that has no checkpointer)."""

    kind: Literal["memory", "sqlite", "postgres"] = "memory"
    """``memory`` (this process, lost at exit), ``sqlite`` (a file) or ``postgres`` (a database)."""
    path: str | None = None
    """The SQLite file (``kind: sqlite``)."""
    dsn: str | None = Field(default=None, repr=False)
    """The PostgreSQL connection string (``kind: postgres``); never shown in ``repr``."""
    pool_size: int = Field(default=10, ge=1, le=1000)
    """``kind: postgres``: the most connections the checkpointer opens (runs of different threads use one each)."""

    @field_validator("path", "dsn", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _kind_needs_its_key(self) -> CheckpointerSettings:
        needed = {"sqlite": "path", "postgres": "dsn"}
        for kind, key in needed.items():
            if self.kind == kind and getattr(self, key) is None:
                raise KeyProblem(key, f"a checkpointer of kind {kind} needs {key}")
            if self.kind != kind and getattr(self, key) is not None:
                raise KeyProblem(key, f"{key} is only read with kind: {kind} (kind is {self.kind})")
        return self


class RunSettings(Section):
    on_disconnect: Literal["continue", "cancel"] = "continue"
    replay_events: int = Field(default=20000, ge=16)
    """Events of one run kept for join and resume."""
    replay_ttl: Duration = 600.0
    """How long a finished run stays joinable."""
    max_runs: int = Field(default=10000, ge=1)
    """Runs kept (live and finished); the oldest finished are forgotten first."""
    max_active: int = Field(default=256, ge=1)
    """Runs executing at once; more get 429."""
    shutdown_grace: Duration = 10.0
    thread_ttl: Duration = 7 * 86400.0
    """How long a thread stays its owner's after its last run started or ended (another
    principal gets 404 for it meanwhile); keep it at least as long as your checkpointer
    keeps a thread. With a bridge it is also the least lifetime of the thread's owner in Redis."""
    max_threads: int = Field(default=100_000, ge=1)
    """Thread owners a node remembers; beyond it the threads idle longest are forgotten first."""
    checkpointer: CheckpointerSettings = CheckpointerSettings()
    """What keeps a thread's state between its runs."""


class HandlerSettings(Section):
    max_payload_chars: int = Field(default=4000, ge=64)
    """Tool inputs/outputs and custom data longer than this are truncated in events."""


class HandoffSettings(Section):
    """Agents across nodes (needs ``eventbus.provider: redis``); see :mod:`kiki_events.handoff`."""

    serve: tuple[str, ...] = ()
    """Agents (graph names) this node runs for other nodes."""
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    """Tasks of one agent this node runs at once; not set: ``eventbus.subscribe.workers``
    (see :attr:`Settings.handoff_concurrency`)."""
    timeout: Duration = 300.0
    """Default time a delegating caller waits for the result."""
    pickup_timeout: Duration = 5.0
    """How long a task may wait for a node to pick it up before serving nodes are checked again."""
    claim_idle: Duration = 30.0
    """A task silent this long (its node died) is reclaimed by another node."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Deliveries of one task before it moves to the dead-letter stream."""
    heartbeat: Duration = 2.0
    """Interval of a serving node's advertisement and of its running tasks' keep-alive."""
    advertise_ttl: Duration = 10.0
    """A node that stops heartbeating stops counting as serving after this long."""
    result_ttl: Duration = 600.0
    """How long results and done markers are kept in Redis."""
    max_input_bytes: int = Field(default=1 << 20, ge=1024)
    max_output_bytes: int = Field(default=256 * 1024, ge=1024)
    """Larger final states are replaced by the last message's text."""

    @field_validator("serve")
    @classmethod
    def _agent_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or len(name) > 200 or any(c.isspace() or c in "{}" for c in name):
                raise ConfigError(f"invalid agent name {name!r} (no spaces or braces, at most 200 characters)")
        return value


def resolve_concurrency(handoff: HandoffSettings, eventbus: EventBusSettings) -> int:
    """``handoff.concurrency`` if it is set, else ``eventbus.subscribe.workers``."""
    return handoff.concurrency if handoff.concurrency is not None else eventbus.subscribe.workers
