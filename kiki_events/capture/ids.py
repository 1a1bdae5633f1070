"""Run ids and agent paths: how the handler names runs and the agents inside them."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

__all__ = ["agent_path", "new_run_id", "runnable_name", "short_run_id"]


def short_run_id(run_uuid: UUID) -> str:
    """Our 22-character run id for a LangChain run UUID (base64url of its bytes)."""
    return base64.urlsafe_b64encode(run_uuid.bytes).rstrip(b"=").decode()


def new_run_id() -> tuple[UUID, str]:
    """A fresh random run: pass the UUID as ``config["run_id"]``; the str is our run id."""
    run_uuid = uuid.uuid4()
    return run_uuid, short_run_id(run_uuid)


def agent_path(metadata: dict[str, Any] | None) -> str | None:
    """The agent path of a LangGraph callback's ``metadata``, or ``None``.

    Subgraph nesting comes from ``langgraph_checkpoint_ns``, each level's task id
    dropped: ``research:<task>|researcher:<task>`` → ``research/researcher``.
    Without a namespace it is the node name (``langgraph_node``).
    """
    if not metadata:
        return None
    ns = metadata.get("langgraph_checkpoint_ns")
    if isinstance(ns, str) and ns:
        return "/".join(part.split(":", 1)[0] for part in ns.split("|"))
    node = metadata.get("langgraph_node")
    return node if isinstance(node, str) else None


def runnable_name(serialized: dict[str, Any] | None) -> str | None:
    """The name of a serialized runnable (its ``name``, else the last part of its ``id``)."""
    if not serialized:
        return None
    name = serialized.get("name")
    if isinstance(name, str):
        return name
    ids = serialized.get("id")
    if isinstance(ids, Sequence) and ids and isinstance(ids[-1], str):
        return ids[-1]
    return None
