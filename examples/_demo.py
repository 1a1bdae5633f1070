"""Load the demo research team by file path (``agents/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

AGENTS = Path(__file__).resolve().parent.parent / "agents"


def research_team(token_delay: float = 0.0) -> Any:
    """The demo graph, built with ``token_delay`` seconds per streamed token."""
    spec = importlib.util.spec_from_file_location("kiki_example_research_team", AGENTS / "research_team.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {AGENTS / 'research_team.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # LangGraph resolves the state's type hints through it
    spec.loader.exec_module(module)
    return module.build_graph(token_delay=token_delay)
