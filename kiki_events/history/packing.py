"""A message's tokens in one row: how events become rows of ``events``, and rows events again.

Most of a run's events are tokens. The writer stores the consecutive tokens of one
message (same run, message, kind, agent, thread, causation and node, seqs one after
another, within a batch) as one *packed* row: ``seq`` and ``ts`` are the first
token's, ``span`` counts the tokens, and ``body`` holds the fields they share with
their ``texts`` (a JSON list) and ``times`` (each token's exact ``ts``: little-endian
doubles in base64, as JSON numbers cost more to write than the rest of the row). A row
holds at most
:data:`MAX_SPAN` tokens spanning at most :data:`PACK_SECONDS`. Every other event, and
a token alone, is a row of its own (``span`` 1).

Readers get the events back one by one (:func:`expand`), exactly as they were. Rows
of one run never disagree but may overlap: a node that stores other nodes' runs
(``store.scope: all``) writes them a token per row, beside the packed rows of the node
that ran them. Read in ``seq`` order, skipping what an earlier row gave
(:class:`Expander`), every event comes once: rows hold consecutive seqs, so a row
starting no later than another covers whatever of it lies below its own end.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic_core import PydanticSerializationError

from ..codec import decode
from ..errors import StoreError
from ..events import StreamEvent, TokenEvent, trusted_token
from .sql import IN_COLUMNS, EventRow, event_from_row, event_row

__all__ = ["MAX_SPAN", "PACK_SECONDS", "Expander", "event_rows", "expand"]

MAX_SPAN = 256
"""Most tokens in one row (queries look this far back for a row reaching a seq)."""
PACK_SECONDS = 2.0
"""Most seconds between the first and last token of one row (time searches look this far back)."""

_SHARED = IN_COLUMNS | {"text"}
_SERIALIZER = TokenEvent.__pydantic_serializer__


def event_rows(
    events: Iterable[StreamEvent], *, pack: bool = True, refused: Callable[[StreamEvent], None] | None = None
) -> list[EventRow]:
    """``events`` (in the order they were published) as rows, a message's consecutive tokens packed.

    An event given twice is one row (a statement may not write a row twice). An event
    that cannot be encoded (a string holding a lone surrogate) is left out and handed
    to ``refused``.
    """
    rows: list[EventRow] = []
    if not pack:
        for event in events:
            _single(rows, event, refused)
        return _unique(rows)
    packing: dict[str, list[TokenEvent]] = {}
    for event in events:
        fields = event.__dict__  # read as a dict: this loop runs once per token
        run_id = fields["run_id"]
        group = packing.get(run_id)
        if fields["type"] == "token":
            if group is not None:
                last = group[-1].__dict__
                if (  # the same message's next token
                    fields["seq"] == last["seq"] + 1
                    and fields["message_id"] == last["message_id"]
                    and fields["kind"] == last["kind"]
                    and fields["agent"] == last["agent"]
                    and fields["thread_id"] == last["thread_id"]
                    and fields["causation_id"] == last["causation_id"]
                    and fields["node"] == last["node"]
                    and len(group) < MAX_SPAN
                    and 0.0 <= fields["ts"] - group[0].ts <= PACK_SECONDS
                ):
                    group.append(event)  # type: ignore[arg-type]
                    continue
                _packed(rows, group, refused)
            packing[run_id] = [event]  # type: ignore[list-item]
            continue
        if group is not None:
            _packed(rows, packing.pop(run_id), refused)
        _single(rows, event, refused)
    for group in packing.values():
        _packed(rows, group, refused)
    return _unique(rows)


def _single(rows: list[EventRow], event: StreamEvent, refused: Callable[[StreamEvent], None] | None) -> None:
    try:
        rows.append(event_row(event))
    except PydanticSerializationError:
        if refused is not None:
            refused(event)


def _packed(rows: list[EventRow], group: list[TokenEvent], refused: Callable[[StreamEvent], None] | None) -> None:
    first = group[0]
    if len(group) == 1:
        _single(rows, first, refused)
        return
    try:
        shared = _SERIALIZER.to_json(first, exclude=_SHARED, exclude_none=True)
        texts = json.dumps([t.text for t in group], ensure_ascii=False, separators=(",", ":")).encode()
        times = base64.b64encode(struct.pack(f"<{len(group)}d", *[t.ts for t in group]))
    except (UnicodeError, PydanticSerializationError):  # a text no JSON document may hold: each on its own
        for token in group:
            _single(rows, token, refused)
        return
    body = b"".join((shared[:-1], b',"texts":', texts, b',"times":"', times, b'"}'))
    rows.append((first.run_id, first.seq, first.ts, "token", first.agent, body, len(group)))


def _unique(rows: list[EventRow]) -> list[EventRow]:
    """``rows`` with one row per ``(run_id, seq)``: the one holding most events."""
    at: dict[tuple[str, int], int] = {}
    unique: list[EventRow] = []
    for row in rows:
        key = (row[0], row[1])
        index = at.get(key)
        if index is None:
            at[key] = len(unique)
            unique.append(row)
        elif row[6] > unique[index][6]:
            unique[index] = row
    return unique


def expand(row: Sequence[Any], after: int = 0) -> list[StreamEvent]:
    """The events in a row of ``events`` (its first seven columns: ``…, body, span``) with a seq above ``after``.

    A packed row's first token is validated as ``codec.decode`` validates an event; the
    others share its fields and are checked for what they add (a text, a finite time).

    Raises:
        StoreError: a packed row that does not hold ``span`` tokens.
    """
    span = int(row[6])
    if span == 1:
        return [event_from_row(row)] if int(row[1]) > after else []
    run_id, seq, _, kind, agent, body = row[:6]
    shared = json.loads(bytes(body))
    texts, times = shared.pop("texts", None), shared.pop("times", None)
    try:
        stamps = struct.unpack(f"<{span}d", base64.b64decode(times, validate=True))
    except (TypeError, ValueError, struct.error):
        stamps = ()
    if (
        not isinstance(texts, list)
        or not len(texts) == len(stamps) == span
        or not all(type(text) is str for text in texts)
        or not all(math.isfinite(ts) for ts in stamps)
    ):
        raise StoreError(f"the stored row {run_id}:{seq} does not hold its {span} tokens")
    head: dict[str, Any] = {"run_id": run_id, "type": kind}
    if agent is not None:
        head["agent"] = agent
    head.update(shared)
    first = int(seq)
    skip = max(0, after - first + 1)
    if skip >= span:
        return []
    model = decode(json.dumps({**head, "seq": first + skip, "ts": stamps[skip], "text": texts[skip]}))
    if not isinstance(model, TokenEvent):
        raise StoreError(f"the stored row {run_id}:{seq} holds {span} events of type {kind!r}, not tokens")
    shared_values = (model.thread_id, model.agent, model.causation_id, model.node, model.message_id)
    # The others: the fields the first's validation checked, with each one's own seq, time and text.
    tokens: list[StreamEvent] = [model]
    return tokens + [
        trusted_token(run_id, first + i, stamps[i], *shared_values, texts[i], model.kind) for i in range(skip + 1, span)
    ]


class Expander:
    """Events from rows read in ``seq`` order per run, each event once (see the module docstring).

    ``after`` maps a run to the last seq already given (a page's cursor).
    """

    __slots__ = ("_given",)

    def __init__(self, after: dict[str, int] | None = None) -> None:
        self._given: dict[str, int] = dict(after or {})

    def events(self, row: Sequence[Any]) -> list[StreamEvent]:
        """The events of ``row`` not given yet (and marks them given)."""
        run_id = row[0]
        given = self._given.get(run_id, 0)
        if int(row[1]) + int(row[6]) - 1 <= given:
            return []
        fresh = expand(row, given)
        self._given[run_id] = fresh[-1].seq
        return fresh

    def given(self, run_id: str) -> int:
        """The last seq of ``run_id`` given so far (0: none)."""
        return self._given.get(run_id, 0)
