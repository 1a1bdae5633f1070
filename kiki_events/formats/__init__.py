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
    }
"""

from __future__ import annotations

import importlib

from ..errors import UnknownFormatError
from .base import Encoder, Format

__all__ = ["DEFAULT_FORMAT", "Encoder", "Format", "format_names", "get_format"]

DEFAULT_FORMAT = "kiki"
"""Name of the format a stream uses unless told otherwise."""

_MODULES: dict[str, str] = {
    "kiki": ".kiki",  # the default
    "agui": ".agui",
}
"""Format name → the module (relative to this package) that defines its ``FORMAT``."""

_loaded: dict[str, Format] = {}


def format_names() -> list[str]:
    """The names of every registered format, the default first."""
    return list(_MODULES)


def get_format(name: str = DEFAULT_FORMAT) -> Format:
    """The format registered as ``name``.

    Raises:
        UnknownFormatError: no format is registered under that name.
    """
    found = _loaded.get(name)
    if found is not None:
        return found
    module = _MODULES.get(name)
    if module is None:
        raise UnknownFormatError(f"unknown wire format {name!r}; expected one of {', '.join(_MODULES)}")
    loaded: Format = importlib.import_module(module, __name__).FORMAT
    _loaded[name] = loaded
    return loaded
