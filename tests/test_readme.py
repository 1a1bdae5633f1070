"""The README's commands work as written on a fresh clone: each command line in its code
blocks (and each command in its text) names a script, example, subcommand and options that
exist, and runs through ``scripts/dev.py`` (which sets up ``.venv``); ``dev.py run`` runs
programs of ``.venv``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiki_events.cli.main import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
DEV = ["python3", "scripts/dev.py"]
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def block_commands() -> Iterator[str]:
    """Command lines of shell code blocks, and ``$ ``-prompted lines of plain ones."""
    for lang, body in FENCE.findall(README):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for raw in body.replace("\\\n", " ").splitlines():
            line = raw.strip()
            if lang in ("", "console"):
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if line and not line.startswith("#"):
                yield line


def text_commands() -> Iterator[str]:
    """Commands quoted in the text: `python …`, `python3 …`, `kiki-events …`."""
    prose = FENCE.sub("", README)
    for span in INLINE.findall(prose):
        if span.split()[0] in ("python", "python3", "kiki-events") and len(span.split()) > 1:
            yield span


def words(line: str) -> list[str]:
    """The words of a command: environment assignments, comments and synopsis brackets left out."""
    tokens = [t for t in shlex.split(line, comments=True) if not ENV.match(t)]
    return [w for token in tokens for w in token.strip("[]").split("|") if w]


def placeholder(word: str) -> bool:
    """``…``, ``<run_id>``, ``FILE``: something the reader fills in."""
    return "…" in word or word.startswith("<") or word.isupper()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def check_kiki_events(args: list[str], line: str) -> None:
    commands = subcommands()
    if args and placeholder(args[0]):
        return
    assert args and args[0] in commands, f"{line!r}: no subcommand {args[:1]} (have {sorted(commands)})"
    parser = commands[args[0]]
    name = args[0]
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if nested and len(args) > 1:  # ``kiki-events history runs …``: the options are the subcommand's
        assert args[1] in nested[0].choices, f"{line!r}: no subcommand {args[:2]}"
        parser = nested[0].choices[args[1]]
        name = f"{args[0]} {args[1]}"
        args = args[1:]
    options = parser._option_string_actions
    for i, word in enumerate(args[1:], 1):
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"{line!r}: kiki-events {name} has no option {word}"
            if word == "--config" and args[i + 1].startswith("config/"):  # the shipped ones
                assert (ROOT / args[i + 1]).is_file(), f"{line!r}: {args[i + 1]} does not exist"


def check_python(args: list[str], line: str) -> None:
    assert args, f"{line!r}: python what?"
    if args[0] == "-m" or placeholder(args[0]):
        return
    script = ROOT / args[0]
    assert script.is_file(), f"{line!r}: {args[0]} does not exist"
    source = script.read_text(encoding="utf-8")
    for word in args[1:]:
        if word.startswith("--"):
            assert f'"{word}"' in source, f"{line!r}: {args[0]} has no option {word}"


def check(line: str) -> None:
    argv = words(line)
    if argv[:2] == DEV:
        assert (ROOT / "scripts" / "dev.py").is_file()
        assert len(argv) > 2 and argv[2] in ("demo", "test", "run"), f"{line!r}: dev.py has no command {argv[2:3]}"
        if argv[2] == "demo":
            check_kiki_events(["serve", *argv[3:]], line)
        elif argv[2] == "run":
            program, args = argv[3], argv[4:]
            assert program in ("kiki-events", "python"), f"{line!r}: run {program}?"
            (check_kiki_events if program == "kiki-events" else check_python)(args, line)
    elif argv[0] == "kiki-events":
        check_kiki_events(argv[1:], line)
    elif argv[0] in ("python", "python3"):
        check_python(argv[1:], line)
    else:
        assert argv[0] == "curl", f"{line!r}: an unknown program"


def test_the_readme_has_commands_to_check() -> None:
    assert len(list(block_commands())) >= 15
    assert len(list(text_commands())) >= 4


@pytest.mark.parametrize("line", sorted(set(block_commands())))
def test_a_command_of_a_code_block_refers_to_what_exists_and_runs_through_dev_py(line: str) -> None:
    check(line)
    argv = words(line)
    assert argv[:2] == DEV or argv[0] == "curl", f"{line!r}: run it through python3 scripts/dev.py"


@pytest.mark.parametrize("span", sorted(set(text_commands())))
def test_a_command_in_the_text_refers_to_what_exists(span: str) -> None:
    check(span)
    assert not span.startswith("python "), f"`{span}`: run it through python3 scripts/dev.py run python"


def test_every_example_is_listed_with_how_to_run_it() -> None:
    examples = sorted(p.name for p in (ROOT / "examples").glob("[0-9]*.py"))
    listed = [line for line in block_commands() if "examples/" in line]

    assert examples
    for name in examples:
        assert any(f"dev.py run python examples/{name}" in line and "#" in line for line in listed), name


def test_the_first_screen_is_the_two_commands() -> None:
    first_screen = README.split("\n---\n", 1)[0]

    assert [b.strip() for _, b in FENCE.findall(first_screen)] == [
        "python3 scripts/dev.py demo",
        "python3 scripts/dev.py test",
    ]


@pytest.fixture
def dev_venv() -> None:
    """``.venv`` as ``scripts/dev.py`` installs it (so ``run`` installs nothing here)."""
    stamp = ROOT / ".venv" / ".kiki-installed"
    if not stamp.is_file():
        pytest.skip(".venv was not set up by scripts/dev.py")


def dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/dev.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.usefixtures("dev_venv")
def test_dev_py_run_runs_python_and_the_command_line_of_the_venv() -> None:
    python = dev("run", "python", "-c", "import sys, kiki_events; print(sys.prefix)")
    schema = dev("run", "kiki-events", "schema")
    missing = dev("run", "no-such-program")

    assert python.returncode == 0, python.stderr
    assert Path(python.stdout.strip()).resolve() == (ROOT / ".venv").resolve()
    assert schema.returncode == 0 and '"title": "StreamEvent"' in schema.stdout
    assert missing.returncode == 1
    assert "'no-such-program' is not a command of .venv" in missing.stderr
