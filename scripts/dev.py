#!/usr/bin/env python3
"""Set up a local virtual environment and run the demo, the checks or any command in it.

    python3 scripts/dev.py demo [serve options]   # the demo server with its live dashboard
    python3 scripts/dev.py test [pytest options]  # ruff, mypy --strict, lint-imports, then pytest
    python3 scripts/dev.py run COMMAND [ARGS]     # a command of .venv, e.g.
        python3 scripts/dev.py run kiki-events tail --config config/cluster-a.yaml
        python3 scripts/dev.py run python examples/01_attach_handler.py

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
COMMANDS = ("demo", "test", "run")


def _run(*cmd: str | Path) -> None:
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, check=False)
    if result.returncode:
        sys.exit(result.returncode)


def _step(text: str) -> None:
    print(f"dev.py: {text}", flush=True)


def ensure_env() -> None:
    """Create ``.venv`` and install the project with every extra, once per pyproject change."""
    if sys.version_info < (3, 11):
        sys.exit(f"kiki_events needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    _step("setting up .venv (once, and again only when pyproject.toml changes; about a minute)")
    if not (BIN / "python").exists():
        _step(f"1/3 creating {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    _step("2/3 upgrading pip")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _step("3/3 installing kiki-events (editable) with its extras all,dev: LangGraph, FastAPI, Redis, pytest …")
    _run(BIN / "python", "-m", "pip", "install", "-e", ".[all,dev]")
    STAMP.write_text(wanted)
    _step(".venv is ready")


def venv_program(name: str) -> Path:
    """The program ``name`` of ``.venv`` (``python`` and ``python3`` are its interpreter)."""
    program = BIN / ("python" if name in ("python", "python3") else name)
    if not program.exists():
        sys.exit(f"dev.py run: {name!r} is not a command of .venv (e.g. kiki-events, python, pytest)")
    return program


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS or (argv[0] == "run" and len(argv) < 2):
        sys.exit(__doc__)
    ensure_env()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        os.execv(BIN / "kiki-events", [str(BIN / "kiki-events"), "serve", *rest])
    if command == "run":
        program = venv_program(rest[0])
        os.execv(program, [str(program), *rest[1:]])
    _run(BIN / "ruff", "check", "kiki_events", "agents", "tests", "benchmarks", "examples", "scripts")
    _run(BIN / "mypy", "kiki_events")
    _run(BIN / "lint-imports")
    _run(BIN / "python", "-m", "pytest", *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
