"""Exceptions raised by kiki_events.

Every error the library raises on purpose derives from :class:`KikiEventsError`;
leaves also inherit the builtin they resemble, so ``except ValueError`` keeps
working for callers who do not know this library::

    KikiEventsError
    ├── ConfigError (ValueError)            bad YAML, bad key, bad value
    ├── MissingDependencyError (ImportError) an optional extra is not installed
    ├── EventDecodeError (ValueError)       foreign bytes are not a valid StreamEvent
    ├── InvalidArgumentError (ValueError)   an argument is invalid or conflicts with another
    ├── UnknownFormatError (LookupError)    no wire format registered under that name
    ├── BusError (RuntimeError)             bus used outside its lifecycle
    │   └── SubscriptionOverflowError       a ``disconnect`` subscription fell behind
    ├── GraphLoadError (ImportError)        ``path.py:attr`` cannot be loaded
    ├── TransportError (ConnectionError)    the cross-node transport (Redis) cannot be reached
    ├── CheckpointerError (ConnectionError) the checkpointer's database cannot be opened
    ├── StoreError (ConnectionError)        the event store's database cannot be used
    ├── WireError (ValueError)              bytes from another node are not an acceptable frame
    ├── RunError (RuntimeError)
    │   ├── RunNotFoundError (LookupError)  unknown (or someone else's) run
    │   ├── UnknownGraphError (LookupError) no graph registered under that name
    │   └── RunLimitError                   too many runs executing at once
    └── HandoffError (RuntimeError)         handing a task to an agent on another node failed
        ├── NoAgentError (LookupError)      no node serves that agent
        ├── HandoffTimeoutError (TimeoutError) no result within the timeout
        └── HandoffFailedError              the agent's run ended in error (redacted message)
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "BusError",
    "CheckpointerError",
    "ConfigError",
    "EventDecodeError",
    "GraphLoadError",
    "HandoffError",
    "HandoffFailedError",
    "HandoffTimeoutError",
    "InvalidArgumentError",
    "KikiEventsError",
    "MissingDependencyError",
    "NoAgentError",
    "RunError",
    "RunLimitError",
    "RunNotFoundError",
    "StoreError",
    "SubscriptionOverflowError",
    "TransportError",
    "UnknownFormatError",
    "UnknownGraphError",
    "WireError",
]


class KikiEventsError(Exception):
    """Root of every exception raised by kiki_events."""


class ConfigError(KikiEventsError, ValueError):
    """The configuration is invalid; the message names the key and the problem."""


class MissingDependencyError(KikiEventsError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class EventDecodeError(KikiEventsError, ValueError):
    """Bytes from outside the process are not a valid StreamEvent."""


class InvalidArgumentError(KikiEventsError, ValueError):
    """An argument is invalid or conflicts with another (``subscribe(run_id=…, topics=…)``)."""


class ArgumentTypeError(KikiEventsError, TypeError):
    """An argument has a type the call cannot use (the message names what it accepts)."""


class CheckFailedError(KikiEventsError, AssertionError):
    """A check of :mod:`kiki_events.testing` found a stream that breaks the event contract."""


class UnknownFormatError(KikiEventsError, LookupError):
    """No wire format is registered under the requested name (see ``kiki_events.formats``)."""


class BusError(KikiEventsError, RuntimeError):
    """The event bus was used outside its lifecycle (not started, or closed)."""


class SubscriptionOverflowError(BusError):
    """A subscription with ``overflow="disconnect"`` fell behind and was closed."""


class GraphLoadError(KikiEventsError, ImportError):
    """A graph reference such as ``./agents/team.py:graph`` cannot be loaded."""


class TransportError(KikiEventsError, ConnectionError):
    """The cross-node transport (Redis) cannot be reached or refused a command."""


class CheckpointerError(KikiEventsError, ConnectionError):
    """The checkpointer's database (``runs.checkpointer``) cannot be opened or set up."""


class StoreError(KikiEventsError, ConnectionError):
    """The event store's database (``store``) cannot be opened, migrated, written or read.

    ``retryable`` is false when the same write would fail again (the database refused
    the data itself, e.g. a character it cannot store), true when it may succeed later.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class WireError(KikiEventsError, ValueError):
    """Bytes that are not an acceptable frame; ``reason`` says which way.

    ``reason`` is ``oversized``, ``unknown_version`` or ``malformed``: receivers count
    dropped frames under it (see :mod:`kiki_events.transports.wire`).
    """

    def __init__(self, reason: Literal["oversized", "unknown_version", "malformed"], detail: str) -> None:
        super().__init__(detail)
        self.reason: Literal["oversized", "unknown_version", "malformed"] = reason


class RunError(KikiEventsError, RuntimeError):
    """A run could not be started, found or controlled."""


class RunNotFoundError(RunError, LookupError):
    """No such run is known here (or it belongs to someone else)."""


class UnknownGraphError(RunError, LookupError):
    """No graph is registered under the requested name."""


class RunLimitError(RunError):
    """Too many runs are executing at once (``runs.max_active``); try again later."""


class HandoffError(KikiEventsError, RuntimeError):
    """A task handed to an agent on another node could not be completed."""


class NoAgentError(HandoffError, LookupError):
    """No live node serves the requested agent (or none picked the task up)."""


class HandoffTimeoutError(HandoffError, TimeoutError):
    """The agent did not deliver a result within the timeout."""


class HandoffFailedError(HandoffError):
    """The agent's run ended without success; the message is redacted.

    ``status`` is the run's final status (``error``, ``cancelled``, ``interrupted``)
    or ``dead_letter`` when the task was given up after too many attempts.
    """

    def __init__(self, message: str, *, status: str = "error", run_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.run_id = run_id
