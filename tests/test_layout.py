"""The package keeps the shape ARCHITECTURE.md describes: small rooms, short functions, one concern per folder.

Import rules (layers, no circles, who may speak Redis or HTTP) are checked by
``lint-imports`` (contracts in pyproject.toml), which the test command runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kiki_events"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _folders() -> list[Path]:
    return sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))


def test_the_package_is_read() -> None:
    assert len(_modules()) > 40
    assert {p.name for p in _folders()} >= {"capture", "core", "formats", "sinks", "transports", "redis"}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these modules (limit {MAX_MODULE_LINES} lines): {long}"


def test_no_function_is_over_80_lines() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert long == {}, f"split these functions (limit {MAX_FUNCTION_LINES} lines): {long}"


def test_every_folder_says_what_it_holds() -> None:
    silent = [p.name for p in _folders() if not ast.get_docstring(ast.parse((p / "__init__.py").read_text()))]
    assert silent == [], f"these folders have no docstring in __init__.py: {silent}"


def test_architecture_md_has_a_paragraph_per_folder() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [p.name for p in _folders() if not re.search(rf"^#+ `?{p.name}/`?", text, re.M)]
    assert missing == [], f"ARCHITECTURE.md has no section for: {missing}"


def test_docstrings_cite_only_documents_in_the_repository() -> None:
    cited: dict[str, str] = {}
    for path in _modules():
        for name in re.findall(r"\b([A-Z][A-Za-z_]*\.md)\b", path.read_text(encoding="utf-8")):
            if not (ROOT / name).exists() and not (ROOT / "docs" / name).exists():
                cited[str(path.relative_to(ROOT))] = name
        for name in re.findall(r"\bdocs/([\w-]+\.md)\b", path.read_text(encoding="utf-8")):
            if not (ROOT / "docs" / name).exists():
                cited[str(path.relative_to(ROOT))] = f"docs/{name}"
    assert cited == {}, f"these modules cite documents that are not in the repository: {cited}"


def test_every_raised_error_derives_from_the_package_base_error() -> None:
    import builtins

    import kiki_events.errors as errors

    ours = {name for name, value in vars(errors).items() if isinstance(value, type)}
    builtin = {
        name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, Exception)
    }
    # Protocols that name their exception: a module's __getattr__, an abstract method.
    allowed = {"AttributeError", "NotImplementedError"}
    foreign: list[str] = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in builtin and name not in ours and name not in allowed:
                    foreign.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    assert foreign == [], "raise a kiki_events.errors class (a KikiEventsError) instead:\n" + "\n".join(foreign)
    assert all(issubclass(getattr(errors, name), errors.KikiEventsError) for name in errors.__all__)
