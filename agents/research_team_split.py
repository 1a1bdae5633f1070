"""The research team split across two nodes: the writer runs on another node.

* ``graph`` (node A, ``config/cluster-a.yaml``) - the research team of
  ``research_team.py`` whose ``writer`` node hands its work to the agent
  ``writer`` on whichever node serves it, and relays that run's events (tokens
  included) into this run while it goes on;
* ``writer_graph`` (node B, ``config/cluster-b.yaml``, which serves ``writer``) -
  the writer alone, ``START -> writer -> END``, on the team's conversation.

A client watching a run on node A sees the whole run: the supervisor and the
researcher from A, the writer's tokens from B (agent ``writer/writer``, with
``node`` naming B), and two ``multiagent:sync`` custom events framing the hand-off.
``KIKI_DEMO_TOKEN_DELAY`` sets the seconds per streamed chunk, as in the demo.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from kiki_events.handoff import remote_agent_node

__all__ = ["graph", "writer_graph"]


def _load_sibling(stem: str) -> ModuleType:
    """Import ``<stem>.py`` from this directory by path (it is not a package)."""
    path = Path(__file__).resolve().with_name(f"{stem}.py")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_kiki_agents_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot load {path}"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_team = _load_sibling("research_team")
_delay = _team._token_delay_from_env()

graph = _team.build_graph(token_delay=_delay, writer=remote_agent_node("writer"))
writer_graph = _team.build_writer_graph(token_delay=_delay)
