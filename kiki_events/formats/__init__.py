"""Wire formats: per-stream encoders that turn a run's events into the bytes a client reads.

The seam is :class:`~kiki_events.formats.base.Format` (see :mod:`kiki_events.formats.base`
for what a format provides and how the server writes it). Ours, the default, is
:mod:`kiki_events.formats.kiki`.

Formats are registered here by name, each in one line of :data:`_MODULES` naming the
module that defines its ``FORMAT``; a format's module is imported when it is first
asked for, so a format nobody uses costs nothing. Adding a format is one new module in
this folder and one line below::

    _MODULES = {
        "kiki": ".kiki",  # the default
        "agui": ".agui",
        "aisdk": ".aisdk",
    }

A format defined elsewhere (an application's own, or a test's) is registered as
an instance with :func:`register_format` and removed with :func:`unregister_format`.

A client picks a format by name (:func:`get_format`, the stream endpoints'
``format`` query parameter) or by media type (:func:`format_for_accept`, their
``Accept`` header); either way the server writes one code path, live, replayed
or relayed from another node.
"""

from __future__ import annotations

import importlib

from ..errors import InvalidArgumentError, UnknownFormatError
from .base import Encoder, Format

__all__ = [
    "DEFAULT_FORMAT",
    "Encoder",
    "Format",
    "format_for_accept",
    "format_names",
    "get_format",
    "register_format",
    "unregister_format",
]

DEFAULT_FORMAT = "kiki"
"""Name of the format a stream uses unless told otherwise."""

_MODULES: dict[str, str] = {
    "kiki": ".kiki",  # the default
    "agui": ".agui",
    "aisdk": ".aisdk",
}
"""Format name → the module (relative to this package) that defines its ``FORMAT``."""

_loaded: dict[str, Format] = {}
_registered: dict[str, Format] = {}
"""Formats registered as instances (:func:`register_format`), after the built-in ones."""

_DEFAULT_RANGES = frozenset({"*/*", "text/*"})
"""``Accept`` ranges that mean "anything": the default format."""


def format_names() -> list[str]:
    """The names of every registered format, the default first."""
    return [*_MODULES, *_registered]


def register_format(fmt: Format) -> None:
    """Make ``fmt`` selectable under its :attr:`~Format.name` (after the built-in formats).

    Registering the same instance again does nothing.

    Raises:
        InvalidArgumentError: ``fmt`` is not a :class:`Format`, or another format has its name.
    """
    if not isinstance(fmt, Format):
        raise InvalidArgumentError(f"register_format needs a Format instance, not {type(fmt).__name__}")
    name = fmt.name
    if _registered.get(name) is fmt:
        return
    if name in _MODULES or name in _registered:
        raise InvalidArgumentError(f"a wire format named {name!r} is already registered")
    _registered[name] = fmt


def unregister_format(name: str) -> None:
    """Remove a format :func:`register_format` added.

    Raises:
        UnknownFormatError: no format was registered under ``name`` that way (built-in ones stay).
    """
    if _registered.pop(name, None) is None:
        raise UnknownFormatError(f"no wire format {name!r} was registered with register_format")


def get_format(name: str = DEFAULT_FORMAT) -> Format:
    """The format registered as ``name``.

    Raises:
        UnknownFormatError: no format is registered under that name.
    """
    found = _loaded.get(name) or _registered.get(name)
    if found is not None:
        return found
    module = _MODULES.get(name)
    if module is None:
        raise UnknownFormatError(f"unknown wire format {name!r}; expected one of {', '.join(format_names())}")
    loaded: Format = importlib.import_module(module, __name__).FORMAT
    _loaded[name] = loaded
    return loaded


def format_for_accept(accept: str | None) -> Format:
    """The format an ``Accept`` header asks for: the first of its media ranges, by quality, that one answers to.

    No header (or an empty one), ``*/*``, ``text/*`` and ``text/event-stream`` mean the
    default; otherwise a range matches a format naming it in :attr:`Format.media_types`
    (``type/*`` matches the first format with a media type of that type), formats tried
    in registry order. Parameters other than ``q`` are ignored; ``q=0`` refuses a range.

    Raises:
        UnknownFormatError: no format answers to any range of ``accept`` (the message lists them all).
    """
    default = get_format()
    if accept is None or not accept.strip():
        return default
    for media_range in _ranges(accept):
        if media_range in _DEFAULT_RANGES:
            return default
        for name in format_names():
            fmt = get_format(name)
            if _matches(media_range, fmt.media_types):
                return fmt
    known = "; ".join(f"{name} ({', '.join(get_format(name).media_types)})" for name in format_names())
    raise UnknownFormatError(f"no wire format answers to Accept {accept[:200]!r}; known formats: {known}")


def _matches(media_range: str, media_types: tuple[str, ...]) -> bool:
    if media_range.endswith("/*"):
        prefix = media_range[:-1]
        return any(media_type.startswith(prefix) for media_type in media_types)
    return media_range in media_types


def _ranges(accept: str) -> list[str]:
    """The media ranges of ``accept``, best quality first (ties in their order), ``q=0`` left out."""
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept.split(",")):
        media_range, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media_range and quality > 0:
            weighted.append((-quality, index, media_range.lower()))
    return [media_range for _, _, media_range in sorted(weighted)]
