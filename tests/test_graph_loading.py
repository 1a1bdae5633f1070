"""Graph references (``./path.py:attr``, ``package.module:attr``) and the graph registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kiki_events.core.graphs import GraphRegistry, is_runnable_graph, load_graph, load_graphs
from kiki_events.errors import GraphLoadError, UnknownGraphError

ROOT = Path(__file__).resolve().parent.parent

_GRAPH_FILE = """
from langgraph.graph import END, START, MessagesState, StateGraph

def node(state):
    return {}

builder = StateGraph(MessagesState)
builder.add_node("node", node)
builder.add_edge(START, "node")
builder.add_edge("node", END)
graph = builder.compile()
not_a_graph = {"x": 1}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_demo_graph_loads_by_relative_path_without_an_agents_package() -> None:
    graph = load_graph("./agents/research_team.py:graph", base_dir=ROOT)

    assert is_runnable_graph(graph)
    assert graph.name == "research_team"
    assert "agents" not in sys.modules
    assert "agents.research_team" not in sys.modules


def test_relative_paths_resolve_against_the_base_dir(tmp_path: Path) -> None:
    _write(tmp_path, "team.py", _GRAPH_FILE)

    assert is_runnable_graph(load_graph("./team.py:graph", base_dir=tmp_path))
    assert is_runnable_graph(load_graph("team.py:graph", base_dir=tmp_path))
    assert is_runnable_graph(load_graph(f"{tmp_path / 'team.py'}:graph"))


def test_same_file_name_in_two_folders_loads_two_modules(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a", "graph.py", _GRAPH_FILE + "\nLABEL = 'a'\n")
    _write(tmp_path / "b", "graph.py", _GRAPH_FILE + "\nLABEL = 'b'\n")

    graph_a = load_graph("./a/graph.py:graph", base_dir=tmp_path)
    graph_b = load_graph("./b/graph.py:graph", base_dir=tmp_path)

    assert graph_a is not graph_b
    labels = sorted(m.LABEL for name, m in sys.modules.items() if name.startswith("_kiki_graph_graph_"))
    assert labels == ["a", "b"]


def test_module_reference_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "kiki_test_graph_module.py", _GRAPH_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))

    assert is_runnable_graph(load_graph("kiki_test_graph_module:graph"))


def test_uncompiled_state_graph_is_compiled(tmp_path: Path) -> None:
    _write(tmp_path, "builder.py", _GRAPH_FILE)

    assert is_runnable_graph(load_graph("./builder.py:builder", base_dir=tmp_path))


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("./missing.py:graph", "not found"),
        ("./team.py:nothing", "has no attribute 'nothing'"),
        ("./team.py:not_a_graph", "is a dict, not a compiled graph"),
        ("./broken.py:graph", "importing"),
        ("no_such_module_kiki:graph", "module 'no_such_module_kiki' not found"),
        ("./team.py", "malformed"),
        ("./team.py:", "malformed"),
        ("./team.py:not-an-identifier", "malformed"),
    ],
)
def test_load_errors_name_the_reference_and_the_problem(tmp_path: Path, ref: str, problem: str) -> None:
    _write(tmp_path, "team.py", _GRAPH_FILE)
    _write(tmp_path, "broken.py", "raise RuntimeError('boom at import')\n")

    with pytest.raises(GraphLoadError) as caught:
        load_graph(ref, base_dir=tmp_path)

    message = str(caught.value)
    assert repr(ref) in message
    assert problem in message
    assert isinstance(caught.value, ImportError)


def test_import_error_message_includes_the_cause_and_keeps_no_half_module(tmp_path: Path) -> None:
    _write(tmp_path, "broken.py", "raise RuntimeError('boom at import')\n")

    with pytest.raises(GraphLoadError, match="RuntimeError: boom at import"):
        load_graph("./broken.py:graph", base_dir=tmp_path)
    assert not [name for name in sys.modules if name.startswith("_kiki_graph_broken_")]


def test_load_graphs_maps_names(tmp_path: Path) -> None:
    _write(tmp_path, "team.py", _GRAPH_FILE)

    graphs = load_graphs({"one": "./team.py:graph", "two": "./team.py:builder"}, base_dir=tmp_path)

    assert sorted(graphs) == ["one", "two"]


def test_registry_register_get_names(tmp_path: Path) -> None:
    _write(tmp_path, "team.py", _GRAPH_FILE)
    graph = load_graph("./team.py:graph", base_dir=tmp_path)
    registry = GraphRegistry({"b": graph})
    registry.register("a", graph)

    assert registry.names() == ["a", "b"]
    assert registry.get("a") is graph
    assert "a" in registry
    assert len(registry) == 2


def test_registry_unknown_name_lists_known_graphs(tmp_path: Path) -> None:
    _write(tmp_path, "team.py", _GRAPH_FILE)
    registry = GraphRegistry({"team": load_graph("./team.py:graph", base_dir=tmp_path)})

    with pytest.raises(UnknownGraphError, match=r"no graph named 'nope' \(known graphs: team\)"):
        registry.get("nope")


def test_registry_rejects_what_is_not_a_graph() -> None:
    registry = GraphRegistry()

    with pytest.raises(GraphLoadError, match="graph 'x' is a int, not a compiled graph"):
        registry.register("x", 42)
    with pytest.raises(ValueError, match="cannot be empty"):
        registry.register("", object())
