"""Capture: the callback handler that turns a LangGraph run into events, and the ``astream_events`` adapter."""

from .astream_events import events_from_astream_events, translate_astream_events
from .handler import EventSink, KikiCallbackHandler
from .ids import agent_path, new_run_id, short_run_id

__all__ = [
    "EventSink",
    "KikiCallbackHandler",
    "agent_path",
    "events_from_astream_events",
    "new_run_id",
    "short_run_id",
    "translate_astream_events",
]
