"""Validation of what clients send: run bodies and ``Last-Event-ID`` cursors.

Every problem becomes an ``HTTPException`` with a message naming the field, so a
client never sees a 500 for bad input.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, get_args, get_origin

import anyio
from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from starlette.requests import ClientDisconnect

from ..errors import InvalidArgumentError
from ..log import get_logger

__all__ = [
    "MAX_CURSOR",
    "MAX_RUN_ID",
    "RunRequest",
    "describe_body_error",
    "inlined_schema",
    "parse_cursor",
    "parse_run_request",
    "read_body",
    "refuse_repeated_query",
    "split_cursor",
]

logger = get_logger("kiki_events.server")

ThreadId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._~:-]{1,128}$")]
MetadataValue = str | int | float | bool | None

MAX_CURSOR = 256
"""Longest ``Last-Event-ID`` accepted."""
MAX_RUN_ID = 128
"""Longest run id in a cursor: no event can carry a longer one."""
# ``[0-9]``, never ``\d`` or ``str.isdigit()``: those also accept ``²``, ``①`` or ``٣``, which ``int()`` refuses.
_SEQ = re.compile(r"[0-9]{1,18}")
_LENGTH = re.compile(r"[0-9]+")


def _absent(*names: str) -> dict[str, Any]:
    return {name: {"type": "null"} for name in names}


class RunRequest(BaseModel):
    """Body of ``POST /runs`` and ``POST /runs/stream``."""

    # Exactly one of ``input``, ``message`` and ``resume`` (a ``null`` one counts as absent), in the
    # schema too; ``resume`` continues an interrupted thread, so it needs ``thread_id``.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "oneOf": [
                {"required": ["message"], "properties": {"message": {"type": "string"}, **_absent("input", "resume")}},
                {"required": ["input"], "properties": {"input": {"type": "object"}, **_absent("message", "resume")}},
                {
                    "required": ["resume", "thread_id"],
                    "properties": {
                        "resume": {"not": {"type": "null"}},
                        "thread_id": {"type": "string"},
                        **_absent("input", "message"),
                    },
                },
            ]
        },
    )

    graph: Annotated[str, Field(min_length=1, max_length=200)]
    """Name of a registered graph."""
    input: dict[str, Any] | None = None
    """The graph's input, as given."""
    message: str | None = None
    """Shortcut for ``{"messages": [{"role": "user", "content": message}]}``."""
    resume: Any = None
    """The answer to the thread's pending ``interrupt()``: the graph continues with
    ``Command(resume=resume)``. With several pending interrupts, an object mapping each
    interrupt's id (``GET /threads/{id}/state``, or the ``interrupt`` event) to its answer."""
    thread_id: ThreadId | None = None
    """Conversation to run on (letters, digits, ``._~:-``; default: a new one)."""
    metadata: dict[Annotated[str, Field(max_length=200)], MetadataValue] | None = None
    """Passed to the run's ``config["metadata"]``."""
    on_disconnect: Literal["continue", "cancel"] | None = None
    """What a disconnect of the streaming client does to the run (default: ``runs.on_disconnect``)."""

    @model_validator(mode="after")
    def _one_input(self) -> RunRequest:
        given = [name for name in ("input", "message", "resume") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InvalidArgumentError("give exactly one of 'input', 'message' or 'resume'")
        if self.resume is not None and self.thread_id is None:
            raise InvalidArgumentError("'resume' answers an interrupted thread: give its 'thread_id' too")
        return self

    def graph_input(self) -> Any:
        """The input to pass to the graph (a ``Command`` when resuming)."""
        if self.resume is not None:
            return Command(resume=self.resume)
        if self.input is not None:
            return self.input
        return {"messages": [{"role": "user", "content": self.message}]}


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes.

    Checked from ``Content-Length`` first and again while reading, because a
    chunked body has no length. A body that takes longer than ``timeout`` seconds
    to arrive (e.g. shorter than its ``Content-Length``) gets 408, and the
    connection is closed.
    """
    if timeout is None:
        return await _read_body(request, limit)
    with anyio.move_on_after(timeout):
        return await _read_body(request, limit)
    raise HTTPException(
        408,
        f"the request body did not arrive within {timeout:g}s (server.body_timeout)",
        headers={"Connection": "close"},
    )


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = HTTPException(413, f"request body is larger than the limit of {limit} bytes (sse.max_body_bytes)")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _LENGTH.fullmatch(declared):
            raise HTTPException(400, f"invalid Content-Length header {declared[:40]!r}: expected ASCII digits 0-9")
        # Compared by length first: int() refuses more than 4300 digits.
        digits = declared.lstrip("0")
        if len(digits) > len(str(limit)) or int(digits or "0") > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        # Nothing is wrong here: one line, no traceback; the answer goes nowhere.
        expected = f" of {declared}" if declared is not None else ""
        logger.info(
            "client went away while sending the body of %s %s (%d%s bytes received)",
            request.method,
            request.url.path,
            size,
            expected,
        )
        raise HTTPException(400, "the client went away before the whole body arrived") from None
    return b"".join(chunks)


async def parse_run_request(request: Request, limit: int, timeout: float | None = None) -> RunRequest:
    """Read and validate a run body; 408, 413, 422 (naming the field) on problems."""
    body = await read_body(request, limit, timeout)
    try:
        return RunRequest.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(422, _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "json_invalid":
        message = "the body is not valid JSON"
    elif kind == "model_type":
        message = "the body must be a JSON object"
    elif kind == "extra_forbidden":
        allowed = ", ".join(RunRequest.model_fields)
        message = f"{loc}: unknown field (allowed: {allowed})"
    elif kind == "missing":
        message = f"{loc}: field required"
    else:
        text = first["msg"].removeprefix("Value error, ")
        message = f"{loc}: {text}" if loc else text
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def parse_cursor(value: str | None, *, name: str = "Last-Event-ID") -> tuple[str, int] | None:
    """``"<run_id>:<seq>"`` (or a bare ``"<seq>"``) → ``(run_id, seq)``; 400 naming the problem if malformed.

    An empty or missing value means "from the start".
    """
    try:
        return split_cursor(value, name=name)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def split_cursor(value: str | None, *, name: str = "Last-Event-ID") -> tuple[str, int] | None:
    """:func:`parse_cursor` without HTTP: raises ``ValueError`` naming the problem.

    ``seq`` is ASCII digits only (``str.isdigit`` also accepts ``²``, ``①`` or ``٣``,
    which ``int`` then refuses) and at most 18 of them, so it fits in 64 bits.
    """
    if not value:
        return None
    if len(value) > MAX_CURSOR:
        raise InvalidArgumentError(f"{name} is {len(value)} characters long, more than the limit of {MAX_CURSOR}")
    run_id, sep, seq = value.rpartition(":")
    shown = json.dumps(value[:80])
    if sep and not run_id:
        raise InvalidArgumentError(
            f"malformed {name} {shown}: the run id before ':' is empty (expected '<run_id>:<seq>')"
        )
    if len(run_id) > MAX_RUN_ID:
        raise InvalidArgumentError(f"malformed {name} {shown}: the run id is longer than {MAX_RUN_ID} characters")
    if not _SEQ.fullmatch(seq):
        raise InvalidArgumentError(
            f"malformed {name} {shown}: the seq after the last ':' must be 1 to 18 ASCII digits 0-9"
            " (expected '<run_id>:<seq>')"
        )
    return run_id, int(seq)


def describe_body_error(exc: ValidationError, expected: str) -> str:
    """One line naming the first problem of a JSON body (and how many more), for a 422.

    ``expected`` names what the body must be when it is not a JSON object, e.g.
    ``"an AG-UI RunAgentInput"``.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    if first["type"] == "json_invalid":
        message = "the body is not valid JSON"
    elif first["type"] == "model_type" and not loc:
        message = f"the body must be a JSON object ({expected})"
    else:
        text = first["msg"].removeprefix("Value error, ")
        message = f"{loc}: {text}" if loc else text
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema (by alias) with every ``$ref`` replaced by its definition.

    For request bodies documented by hand: the OpenAPI document has no ``$defs``.
    """
    schema = model.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


_SCALARS = "_kiki_scalar_query_names"
"""The attribute of a route holding its one-value query parameters, found once (routes compare by
value and are not hashable, so the route itself keeps them, and they go with it)."""


def _scalar_query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters of ``route`` that take one value (not a list)."""
    names: frozenset[str] | None = getattr(route, _SCALARS, None)
    if names is None:
        names = frozenset(
            param.alias
            for param in route.dependant.query_params
            if not any(
                get_origin(arg) in (list, tuple, set, frozenset)
                for arg in (param.field_info.annotation, *get_args(param.field_info.annotation))
            )
        )
        setattr(route, _SCALARS, names)
    return names


def refuse_repeated_query(request: Request) -> None:
    """A query parameter that takes one value, given several times, is a 422 naming it (not the last one silently)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or len(request.query_params) == len(request.query_params.multi_items()):
        return
    scalars = _scalar_query_names(route)
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in seen and name in scalars:
            raise HTTPException(422, f"query.{name}: given more than once; give one value")
        seen.add(name)
