"""Shared fixtures: demo modules loaded by file path, like the server does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.redis_server import key_prefix, redis_server, redis_url

__all__ = ["key_prefix", "redis_server", "redis_url"]

ROOT = Path(__file__).resolve().parent.parent
_loaded: dict[str, ModuleType] = {}


def load_demo(stem: str) -> ModuleType:
    """Import ``agents/<stem>.py`` by path (``agents`` is not a package)."""
    if stem not in _loaded:
        path = ROOT / "agents" / f"{stem}.py"
        spec = importlib.util.spec_from_file_location(f"kiki_demo_tests_{stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[stem] = module
    return _loaded[stem]


@pytest.fixture(scope="session")
def research_team() -> ModuleType:
    """The demo research team module (``build_graph``, ``build_benchmark_graph``)."""
    return load_demo("research_team")


@pytest.fixture(scope="session")
def scripted() -> ModuleType:
    """The scripted chat model module."""
    return load_demo("scripted_model")
