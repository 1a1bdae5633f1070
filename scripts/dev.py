#!/usr/bin/env python3
"""Set up a local virtual environment and run the demo or the checks.

    python3 scripts/dev.py demo [serve options]   # the demo server with its live dashboard
    python3 scripts/dev.py test [pytest options]  # ruff, mypy --strict, then pytest

The environment lives in ``.venv`` and is (re)installed whenever
``pyproject.toml`` changes. Needs only Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".kiki-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _run(*cmd: str | Path) -> None:
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, check=False)
    if result.returncode:
        sys.exit(result.returncode)


def ensure_env() -> None:
    """Create ``.venv`` and install the project with every extra, once per pyproject change."""
    if sys.version_info < (3, 11):
        sys.exit(f"kiki_events needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing kiki-events with its extras into .venv …", flush=True)
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[all,dev]")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("demo", "test"):
        sys.exit(__doc__)
    ensure_env()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        os.execv(BIN / "kiki-events", [str(BIN / "kiki-events"), "serve", *rest])
    _run(BIN / "ruff", "check", "kiki_events", "agents", "tests", "benchmarks", "examples", "scripts")
    _run(BIN / "mypy", "kiki_events")
    _run(BIN / "python", "-m", "pytest", *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
