"""The programs in examples/ run and do what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("[0-9]*.py"))


def run_example(path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=90, env=env, cwd=ROOT, check=False
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def test_every_example_is_covered() -> None:
    assert [p.name for p in EXAMPLES] == ["01_attach_handler.py", "02_own_fastapi_app.py", "03_cross_node.py"]


def test_attach_handler_prints_the_run() -> None:
    out = run_example(ROOT / "examples" / "01_attach_handler.py")
    assert "[research/researcher] calls web_search(" in out
    assert "[writer] completed" in out
    assert "done: success" in out


@pytest.mark.slow
def test_own_fastapi_app_streams_both_ways() -> None:
    out = run_example(ROOT / "examples" / "02_own_fastapi_app.py").splitlines()
    assert out[0].startswith("/chat: ") and out[0].endswith("last: done success")
    assert out[1].startswith("/agents/runs/") and out[1].endswith("last: done")


def test_cross_node_follows_a_run_of_another_node_and_cancels_one() -> None:
    out = run_example(ROOT / "examples" / "03_cross_node.py").splitlines()
    assert "on node-b: [writer] completed (produced on node-a)" in out
    assert any(line.startswith("on node-b: done success after") and line.endswith("from node-a") for line in out)
    assert out[-2:] == ["on node-b: the second run ended cancelled", "on node-a: the second run is cancelled"]
