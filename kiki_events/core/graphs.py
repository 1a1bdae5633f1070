"""Graph references and the registry of graphs a server can run.

A reference names a compiled LangGraph graph the way ``langgraph.json`` does:

* ``./agents/research_team.py:graph`` – a Python file (relative paths resolve
  against a base directory, by default the current one) and an attribute;
* ``package.module:attr`` – an importable module and an attribute.

Files are loaded under a unique private module name, so a folder such as
``agents/`` never becomes an importable package (it would collide with other
libraries' ``agents``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import GraphLoadError, InvalidArgumentError, UnknownGraphError
from ..redaction import redact_text

__all__ = ["GraphRegistry", "is_runnable_graph", "load_graph", "load_graphs"]

_FILE_SUFFIXES = (".py",)


def is_runnable_graph(obj: object) -> bool:
    """Whether ``obj`` can be run like a compiled graph (it has ``ainvoke``)."""
    return callable(getattr(obj, "ainvoke", None))


def load_graph(ref: str, *, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """Load the compiled graph that ``ref`` names.

    An uncompiled ``StateGraph`` (anything with ``compile()`` but no ``ainvoke``)
    is compiled, as LangGraph's own server does.

    Raises:
        GraphLoadError: the reference is malformed, the file or module is missing,
            importing it raised, the attribute is missing, or it is not a graph.
            The message names the reference and the problem.
    """
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr or not attr.isidentifier():
        raise GraphLoadError(
            f"graph reference {ref!r} is malformed: expected './path/file.py:attr' or 'package.module:attr'"
        )
    if target.endswith(_FILE_SUFFIXES) or "/" in target or "\\" in target:
        module = _load_file(ref, target, base_dir)
    else:
        module = _import_module(ref, target)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise GraphLoadError(f"graph reference {ref!r}: {target} has no attribute {attr!r}") from None
    return _as_graph(f"graph reference {ref!r}", obj)


def _load_file(ref: str, target: str, base_dir: str | os.PathLike[str] | None) -> Any:
    path = Path(target)
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    path = path.resolve()
    if not path.is_file():
        raise GraphLoadError(f"graph reference {ref!r}: file {path} not found")
    # A name derived from the full path: two files called graph.py in different
    # folders must not replace each other in sys.modules.
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"_kiki_graph_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GraphLoadError(f"graph reference {ref!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing: dataclasses and pydantic models defined in the
    # file look their module up in sys.modules.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if not isinstance(exc, Exception):
            raise
        raise GraphLoadError(f"graph reference {ref!r}: importing {path} raised {_raised(exc)}") from exc
    return module


def _import_module(ref: str, target: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise GraphLoadError(f"graph reference {ref!r}: module {target!r} not found") from exc
        raise GraphLoadError(f"graph reference {ref!r}: importing {target} raised {_raised(exc)}") from exc
    except Exception as exc:
        raise GraphLoadError(f"graph reference {ref!r}: importing {target} raised {_raised(exc)}") from exc


def _raised(exc: BaseException) -> str:
    """``Type: message``, credentials masked (the message may quote a URL with its password)."""
    return f"{type(exc).__name__}: {redact_text(str(exc))}"


def _as_graph(label: str, obj: object) -> Any:
    if is_runnable_graph(obj):
        return obj
    compile_ = getattr(obj, "compile", None)
    if callable(compile_):
        try:
            compiled = compile_()
        except Exception as exc:
            raise GraphLoadError(f"{label}: compiling it raised {_raised(exc)}") from exc
        if is_runnable_graph(compiled):
            return compiled
    raise GraphLoadError(f"{label} is a {type(obj).__name__}, not a compiled graph (it has no ainvoke)")


def _lend(graph: Any, checkpointer: object) -> Any:
    """``graph``, or a copy of it holding ``checkpointer`` if it was compiled without one.

    Only LangGraph's ``Pregel`` (a compiled graph, with ``copy``) can be lent one;
    anything else runnable is served as it is.
    """
    copy = getattr(graph, "copy", None)
    if checkpointer is None or getattr(graph, "checkpointer", False) is not None or not callable(copy):
        return graph
    return copy(update={"checkpointer": checkpointer})


def load_graphs(refs: Mapping[str, str], *, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Load every ``name → reference`` of ``refs``; see :func:`load_graph`."""
    return {name: load_graph(ref, base_dir=base_dir) for name, ref in refs.items()}


class GraphRegistry:
    """Graph name → compiled graph: the graphs a runtime can start runs of."""

    def __init__(self, graphs: Mapping[str, object] | None = None) -> None:
        self._graphs: dict[str, Any] = {}
        """The graphs as registered (never changed)."""
        self._served: dict[str, Any] = {}
        """The graphs runs use: those without a checkpointer of their own lent :attr:`checkpointer`."""
        self.checkpointer: Any = None
        """The checkpointer lent to graphs compiled without one (:meth:`use_checkpointer`)."""
        for name, graph in (graphs or {}).items():
            self.register(name, graph)

    def use_checkpointer(self, checkpointer: object) -> None:
        """Give ``checkpointer`` to every graph compiled without one, now and when registered later.

        Each such graph is served as a copy holding it (the registered graph object
        is left as it is); a graph with a checkpointer of its own (or ``checkpointer=False``)
        keeps it. ``None`` takes it back.
        """
        self.checkpointer = checkpointer
        self._served = {name: _lend(graph, checkpointer) for name, graph in self._graphs.items()}

    def register(self, name: str, graph: object) -> None:
        """Register ``graph`` under ``name`` (replacing any graph of that name).

        Raises:
            GraphLoadError: ``graph`` is not a runnable graph.
            InvalidArgumentError: ``name`` is empty (a ``ValueError``).
        """
        if not name:
            raise InvalidArgumentError("a graph name cannot be empty")
        compiled = _as_graph(f"graph {name!r}", graph)
        self._graphs[name] = compiled
        self._served[name] = _lend(compiled, self.checkpointer)

    def get(self, name: str, *, lent: bool = True) -> Any:
        """The graph registered under ``name`` (``lent=False``: as registered, without the lent checkpointer).

        Raises:
            UnknownGraphError: nothing is registered under ``name``.
        """
        try:
            return (self._served if lent else self._graphs)[name]
        except KeyError:
            known = ", ".join(sorted(self._graphs)) or "none"
            raise UnknownGraphError(f"no graph named {name!r} (known graphs: {known})") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._graphs)

    def __contains__(self, name: object) -> bool:
        return name in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)
