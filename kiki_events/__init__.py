"""kiki_events: one callback handler turns any LangGraph run into typed events.

    from . import EventBus, KikiCallbackHandler

    async with EventBus() as bus:
        handler = KikiCallbackHandler(bus)
        await graph.ainvoke(inputs, config={"callbacks": [handler]})

The HTTP/SSE layer lives in :mod:`kiki_events.server`, test helpers in
:mod:`kiki_events.testing`.
"""

from __future__ import annotations

import logging

from .capture.astream_events import events_from_astream_events, translate_astream_events
from .capture.handler import KikiCallbackHandler, new_run_id, short_run_id
from .codec import decode, encode, event_json_schema
from .config import Settings, load_settings
from .core.bus import BusStats, EventBus, Overflow, Subscription
from .core.graphs import GraphRegistry, load_graph
from .cost import Price, PriceTable
from .errors import (
    ArgumentTypeError,
    BusError,
    CheckFailedError,
    ConfigError,
    EventDecodeError,
    GraphLoadError,
    HandoffError,
    HandoffFailedError,
    HandoffTimeoutError,
    InvalidArgumentError,
    KikiEventsError,
    MissingDependencyError,
    NoAgentError,
    RunError,
    RunLimitError,
    RunNotFoundError,
    SubscriptionOverflowError,
    TransportError,
    UnknownFormatError,
    UnknownGraphError,
    WireError,
)
from .events import (
    SCHEMA_VERSION,
    AgentLifecycleEvent,
    Cost,
    CustomEvent,
    DoneEvent,
    ErrorEvent,
    InterruptEvent,
    InterruptInfo,
    LLMCallEvent,
    ModelCost,
    RunStatus,
    StatusEvent,
    StreamEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from .formats.kiki import SSEDecoder, decode_sse, sse_data
from .handoff import Handoff, HandoffResult, remote_agent_node
from .log import get_logger as _get_logger
from .redaction import redact_error, redact_text
from .runtime import KikiRuntime

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "AgentLifecycleEvent",
    "ArgumentTypeError",
    "BusError",
    "BusStats",
    "CheckFailedError",
    "ConfigError",
    "Cost",
    "CustomEvent",
    "DoneEvent",
    "ErrorEvent",
    "EventBus",
    "EventDecodeError",
    "GraphLoadError",
    "GraphRegistry",
    "Handoff",
    "HandoffError",
    "HandoffFailedError",
    "HandoffResult",
    "HandoffTimeoutError",
    "InterruptEvent",
    "InterruptInfo",
    "InvalidArgumentError",
    "KikiCallbackHandler",
    "KikiEventsError",
    "KikiRuntime",
    "LLMCallEvent",
    "MissingDependencyError",
    "ModelCost",
    "NoAgentError",
    "Overflow",
    "Price",
    "PriceTable",
    "RunError",
    "RunLimitError",
    "RunNotFoundError",
    "RunStatus",
    "SSEDecoder",
    "Settings",
    "StatusEvent",
    "StreamEvent",
    "Subscription",
    "SubscriptionOverflowError",
    "TokenEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "TransportError",
    "UnknownFormatError",
    "UnknownGraphError",
    "Usage",
    "WireError",
    "__version__",
    "decode",
    "decode_sse",
    "encode",
    "event_json_schema",
    "events_from_astream_events",
    "load_graph",
    "load_settings",
    "new_run_id",
    "redact_error",
    "redact_text",
    "remote_agent_node",
    "short_run_id",
    "sse_data",
    "translate_astream_events",
]

# A library never configures logging; this only silences "no handler" warnings.
_get_logger().addHandler(logging.NullHandler())
