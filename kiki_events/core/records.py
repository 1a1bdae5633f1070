"""Records that leave a node: a run as the cluster registry knows it, a thread's owner.

They travel as flat text fields (a hash, a stream entry, a message); the parsers
here read such fields back whatever the store gave (text or bytes), and reject
anything malformed with ``ValueError`` rather than guessing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from ..errors import InvalidArgumentError
from ..events import Cost, Usage

__all__ = ["RunInfo", "ThreadOwner", "float_of", "int_of", "text_fields", "text_of"]

_INT = re.compile(r"[0-9]{1,18}")
_FLOAT = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?")


def text_of(value: Any) -> str:
    """A stored value as text (bytes decoded as UTF-8, undecodable bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def int_of(value: Any) -> int:
    """A count or seq stored as text (1 to 18 ASCII digits); ``ValueError`` otherwise."""
    text = text_of(value)
    if not _INT.fullmatch(text):
        raise InvalidArgumentError(f"expected an integer, got {text[:40]!r}")
    return int(text)


def float_of(value: Any) -> float:
    """A finite number stored as text, as ``repr(float)`` writes it; ``ValueError`` otherwise."""
    text = text_of(value)
    number = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not math.isfinite(number):
        raise InvalidArgumentError(f"expected a finite number, got {text[:40]!r}")
    return number


def text_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    """Flat fields (a hash, a stream entry) as text."""
    return {text_of(k): text_of(v) for k, v in raw.items()}


_M = TypeVar("_M", Usage, Cost)


def _model_of(kind: type[_M], text: str | None) -> _M | None:
    """A usage or cost stored as JSON; ``None`` when absent or not valid (it is shown, not relied on)."""
    if not text:
        return None
    try:
        return kind.model_validate_json(text)
    except ValidationError:
        return None


@dataclass(frozen=True)
class RunInfo:
    """A run as the registry knows it: where it executes and how it is doing."""

    run_id: str
    node: str
    status: str = "running"
    """``pending``, ``running``, or a final status (``success``, ``error``, ``interrupted``, ``cancelled``)."""
    thread_id: str | None = None
    graph: str | None = None
    principal: str | None = None
    """Owner of the run (empty when anonymous)."""
    created_at: float = 0.0
    ended_at: float | None = None
    last_seq: int = 0
    """Seq of the run's last event, once it ended."""
    relayed_into: str | None = None
    """The run that relays this one's events (its delegate's caller); not listed on its thread."""
    trace_id: str | None = None
    """The run's tracing id (``None``: not traced)."""
    usage: Usage | None = None
    """Its token usage, once it ended (its ``done``'s)."""
    cost: Cost | None = None
    """What its LLM calls cost, once it ended (``None`` without a price table)."""

    @property
    def ended(self) -> bool:
        return self.status not in ("pending", "running")

    def to_fields(self) -> dict[str, str]:
        """Flat string fields (a Redis hash)."""
        fields = {"node": self.node, "status": self.status, "created_at": repr(self.created_at)}
        if self.thread_id is not None:
            fields["thread_id"] = self.thread_id
        if self.graph is not None:
            fields["graph"] = self.graph
        if self.principal is not None:
            fields["principal"] = self.principal
        if self.ended_at is not None:
            fields["ended_at"] = repr(self.ended_at)
        if self.last_seq:
            fields["last_seq"] = str(self.last_seq)
        if self.relayed_into is not None:
            fields["relayed_into"] = self.relayed_into
        if self.trace_id is not None:
            fields["trace_id"] = self.trace_id
        if self.usage is not None:
            fields["usage"] = self.usage.model_dump_json()
        if self.cost is not None:
            fields["cost"] = self.cost.model_dump_json(exclude_none=True)
        return fields

    @classmethod
    def from_fields(cls, run_id: str, fields: Mapping[Any, Any]) -> RunInfo | None:
        """Parse a hash written by :meth:`to_fields`; ``None`` if it is not one."""
        text = text_fields(fields)
        node = text.get("node")
        if not node:
            return None
        try:
            ended = text.get("ended_at")
            return cls(
                run_id=run_id,
                node=node,
                status=text.get("status") or "running",
                thread_id=text.get("thread_id"),
                graph=text.get("graph"),
                principal=text.get("principal"),
                created_at=float_of(text.get("created_at") or "0"),
                ended_at=float_of(ended) if ended else None,
                last_seq=int_of(text.get("last_seq") or "0"),
                relayed_into=text.get("relayed_into") or None,
                trace_id=text.get("trace_id") or None,
                usage=_model_of(Usage, text.get("usage")),
                cost=_model_of(Cost, text.get("cost")),
            )
        except ValueError:
            return None

    def public(self) -> dict[str, Any]:
        """JSON-ready status (no principal: only its owner asks): the body of ``GET /runs/{id}``."""
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "graph": self.graph,
            "status": self.status,
            "node": self.node,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "last_seq": self.last_seq,
            "relayed_into": self.relayed_into,
            "trace_id": self.trace_id,
            "usage": self.usage.model_dump() if self.usage is not None else None,
            "cost": self.cost.model_dump(mode="json", exclude_none=True) if self.cost is not None else None,
        }


@dataclass(frozen=True)
class ThreadOwner:
    """The principal a thread belongs to, cluster-wide (``None``: anonymous).

    Stored as the value of ``<prefix>threadowner:{<thread_id>}``: the principal, or
    an empty string for anonymous (a principal is never empty).
    """

    principal: str | None

    def encode(self) -> str:
        return self.principal or ""

    @classmethod
    def decode(cls, value: Any) -> ThreadOwner:
        text = text_of(value)
        return cls(text or None)
