"""The package's loggers: run ids on every record, secrets masked before any handler.

Every module of kiki_events logs through :func:`get_logger`, which returns the
stdlib logger of that name carrying one :class:`LogFilter`. The package configures
nothing else (a ``NullHandler`` on ``kiki_events``); the application decides where
records go and how they look.

The filter, for each record that passes the logger's level:

* adds the ids bound with :func:`bind` as record attributes ``run_id``,
  ``thread_id`` and ``agent`` (only those bound; ids passed with ``extra=`` win);
* masks credentials (:func:`kiki_events.redaction.redact_text`) in the message
  (formatted with its arguments, which are then dropped), in string attributes
  added with ``extra=``, in the stack and in the exception: a traceback is
  formatted once, masked into ``exc_text``, and ``exc_info`` is cleared, so no
  handler can format the original again.

Ids are bound at our own entry points (the task of a run, an SSE response, a task
served for another node) rather than in callbacks, whose context does not reach
the graph's tasks. Logging filters are not inherited by child loggers, which is
why every logger of the package is made here; an application can put the same
filter on a handler to treat every record it writes alike (``kiki-events serve``
does, for uvicorn's records too).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TypeVar

from .errors import InvalidArgumentError
from .redaction import redact_text

__all__ = ["ID_FIELDS", "LogFilter", "bind", "bound_ids", "bound_stream", "get_logger", "redact_record"]

T = TypeVar("T")

ID_FIELDS = ("run_id", "thread_id", "agent")
"""The record attributes :func:`bind` sets."""

_ROOT = "kiki_events"
_NONE: MappingProxyType[str, str] = MappingProxyType({})
_IDS: ContextVar[MappingProxyType[str, str]] = ContextVar("kiki_events_log_ids", default=_NONE)
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_DONE = "_kiki_clean"
"""Set on a record once the filter has treated it (a logger's and a handler's filter both see it)."""


def _given(run_id: str | None, thread_id: str | None, agent: str | None) -> dict[str, str]:
    return {k: v for k, v in zip(ID_FIELDS, (run_id, thread_id, agent), strict=True) if v is not None}


@contextmanager
def bind(*, run_id: str | None = None, thread_id: str | None = None, agent: str | None = None) -> Iterator[None]:
    """Within the block (and tasks created in it), records carry these ids; ``None`` leaves an id as it was."""
    token = _IDS.set(MappingProxyType({**_IDS.get(), **_given(run_id, thread_id, agent)}))
    try:
        yield
    finally:
        _IDS.reset(token)


def bound_ids() -> dict[str, str]:
    """The ids bound here now."""
    return dict(_IDS.get())


async def bound_stream(
    stream: AsyncGenerator[T, None],
    *,
    run_id: str | None = None,
    thread_id: str | None = None,
    agent: str | None = None,
) -> AsyncGenerator[T, None]:
    """``stream``, with ``ids`` bound while it runs (including its clean-up), not while its reader does.

    A ``with bind(…)`` around ``yield`` would leak the ids into the reader between
    items, and could end in another task than it began. The ids are merged once, with
    what is bound where the stream starts; each step costs one set and one reset.
    """
    bound = MappingProxyType({**_IDS.get(), **_given(run_id, thread_id, agent)})
    step = stream.__anext__
    try:
        while True:
            token = _IDS.set(bound)
            try:
                item = await step()
            except StopAsyncIteration:
                return
            finally:
                _IDS.reset(token)
            yield item
    finally:
        token = _IDS.set(bound)
        try:
            await stream.aclose()
        finally:
            _IDS.reset(token)


def redact_record(record: logging.LogRecord) -> None:
    """Mask credentials in ``record``: message and arguments, string extras, stack, exception text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not break the caller; keep what there is
        message = f"{record.msg!s} {record.args!r}"
    record.msg = redact_text(message)
    record.args = ()
    if record.exc_info and record.exc_info[0] is not None:
        if not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    for key, value in list(vars(record).items()):
        if isinstance(value, str) and key not in _STANDARD:
            setattr(record, key, redact_text(value))


class LogFilter(logging.Filter):
    """Adds the bound ids and masks credentials (see the module docstring); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, False):
            return True
        for key, value in _IDS.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        redact_record(record)
        setattr(record, _DONE, True)
        return True


_FILTER = LogFilter()


def get_logger(name: str = _ROOT) -> logging.Logger:
    """The logger ``name`` (``kiki_events`` or below it), carrying the package's :class:`LogFilter`."""
    if name != _ROOT and not name.startswith(_ROOT + "."):
        raise InvalidArgumentError(f"get_logger is for loggers of the package ({_ROOT}…), not {name!r}")
    logger = logging.getLogger(name)
    logger.addFilter(_FILTER)  # no-op when it is there already
    return logger
