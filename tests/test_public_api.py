"""The public API is declared in ``__all__`` and importing the package does nothing else."""

from __future__ import annotations
import __future__

import inspect
import subprocess
import sys
import types
from pathlib import Path

import kiki_events
from kiki_events import KikiEventsError

ROOT = Path(__file__).resolve().parent.parent
INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def public_members() -> set[str]:
    """Names a user sees on the package: no private names, submodules or ``__future__`` flags."""
    return {
        name
        for name, value in vars(kiki_events).items()
        if (not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS)
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }


def test_all_lists_exactly_the_exported_members() -> None:
    assert len(kiki_events.__all__) == len(set(kiki_events.__all__)), "duplicates in __all__"
    assert set(kiki_events.__all__) == public_members()


def test_every_name_in_all_exists() -> None:
    missing = [name for name in kiki_events.__all__ if not hasattr(kiki_events, name)]

    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from kiki_events import *", namespace)

    assert set(namespace) - {"__builtins__"} == set(kiki_events.__all__)


def test_every_public_class_and_function_has_a_docstring() -> None:
    undocumented = [
        name
        for name in kiki_events.__all__
        if (inspect.isclass(value := getattr(kiki_events, name)) or inspect.isfunction(value))
        and not (inspect.getdoc(value) or "").strip()
    ]

    assert undocumented == []


def test_every_exported_exception_is_a_kiki_events_error() -> None:
    exceptions = [
        value
        for name in kiki_events.__all__
        if inspect.isclass(value := getattr(kiki_events, name)) and issubclass(value, BaseException)
    ]

    assert len(exceptions) >= 9
    assert all(issubclass(exc, KikiEventsError) for exc in exceptions)


def test_the_version_is_a_string() -> None:
    assert isinstance(kiki_events.__version__, str)
    assert kiki_events.__version__.count(".") >= 2


def _fresh_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_package_imports_no_server_or_backend_and_has_no_side_effects() -> None:
    out = _fresh_python(
        "import logging, sys, threading, warnings\n"
        "warnings.simplefilter('error')\n"
        "import kiki_events\n"
        "print([m for m in ('fastapi', 'uvicorn', 'redis', 'langfuse') if m in sys.modules])\n"
        "print(threading.active_count(), logging.getLogger().handlers, logging.getLogger('kiki_events').handlers)\n"
    )

    imported, side_effects = out.splitlines()
    assert imported == "[]"  # the server and the optional backends load only when used
    # No threads started and no logging configured; the library's own logger only
    # has the NullHandler that silences "no handlers could be found".
    assert side_effects == "1 [] [<NullHandler (NOTSET)>]"
