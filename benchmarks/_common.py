"""Shared benchmark plumbing: demo loading, rounds, medians, JSON output."""

from __future__ import annotations

import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load_demo(stem: str) -> ModuleType:
    """Import ``agents/<stem>.py`` by path (``agents`` is not a package)."""
    path = ROOT / "agents" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"kiki_bench_{stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, results: dict[str, Any], out: str | None) -> Path:
    """Write ``results`` (plus machine facts) as JSON; return the path."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        **results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def verdict(value: float, bar: float, *, higher_is_better: bool = False) -> str:
    ok = value >= bar if higher_is_better else value <= bar
    return "PASS" if ok else "FAIL"
