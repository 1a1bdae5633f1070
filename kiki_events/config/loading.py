"""Reading a settings file: YAML, ``${VAR}`` expansion, ``KIKI__…`` overrides, error messages.

Every problem is one :class:`~kiki_events.errors.ConfigError` naming the file, the
key and the problem; a secret is never quoted back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .values import KeyProblem

__all__ = ["ENV_PREFIX", "describe", "key_part", "read_settings_data"]

ENV_PREFIX = "KIKI__"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_KEYS = frozenset({"password", "secret_key", "url", "dsn", "bearer_tokens"})
"""Keys whose invalid values are never quoted back in an error message (they may hold credentials)."""
_MAX_VALUES = 10_000
"""Values a settings document may hold once YAML aliases are followed."""
_MAX_DEPTH = 32


def key_part(part: object) -> str:
    """A key as an error message names it: quoted when it is empty or holds spaces, dots or colons."""
    if isinstance(part, str) and not _PLAIN_KEY.fullmatch(part):
        return repr(part)
    return str(part)


def describe(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        # pydantic names a bad key by appending it and "[key]" (or with ``invalid_key``); a key
        # spelled "[key]" in the file is not one.
        marked = len(loc) >= 2 and loc[-1] == "[key]" and loc[-2] == err.get("input")
        key_error = err["type"] == "invalid_key" or marked
        if key_error:  # a key that YAML read as a number or a boolean (``no:``, ``1:``)
            loc = loc[:-2] if marked else loc[:-1]
        key = ".".join(key_part(p) for p in loc) or "(top level)"
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, KeyProblem):
            key = ".".join(filter(None, (key if loc else "", cause.key)))
        if key_error:
            message = f"the key {err['input']!r} is not a string (quote it)"
        elif err["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = err["msg"].removeprefix("Value error, ")
            secret = bool(err["loc"]) and err["loc"][-1] in _SECRET_KEYS
            shown = "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict)
            if shown and not secret and ", got " not in message:
                message += f" (got {err['input']!r})"
        problems.append(f"{key}: {message}")
    more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
    return f"{source}: {problems[0]}{more}"


def _expand(value: Any, source: str, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: {path}: environment variable {name} is not set (use ${{{name}:-default}})")

        expanded = _VAR.sub(sub, value)
        if expanded != value and _VAR.fullmatch(value):
            return _env_value(expanded)
        return expanded
    if isinstance(value, dict):
        return {k: _expand(v, source, ".".join(filter(None, (path, key_part(k)))), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, source, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


def _env_value(raw: str) -> Any:
    """An environment value as settings data.

    Text stays text (pydantic turns ``"9001"`` into an int or ``"true"`` into a bool
    where the key wants one), so a password such as ``123456``, ``0x1F`` or ``#x!``
    arrives unchanged; only a YAML flow collection (``[a, b]``, ``{k: v}``) is parsed.
    """
    if not raw:
        return None
    if raw.lstrip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError):
            return raw
    return raw


def _load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load``, refusing a key written twice in one mapping (YAML keeps the last silently)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_duplicates(root: yaml.Node, source: str) -> None:
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()  # a node reached again through an alias was checked already
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    stack.append((value, path))
                    continue
                where = f"{path}.{key.value}" if path else key.value
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    raise ConfigError(
                        f"{source}: {where}: duplicate key at line {line} (first at line {first[key.tag, key.value]})"
                    )
                first[key.tag, key.value] = line
                stack.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))


def _check_shape(data: Any, source: str) -> None:
    """Refuse documents that would take forever to expand (YAML alias bombs) or recurse."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > _MAX_VALUES:
            raise ConfigError(f"{source}: too many values (more than {_MAX_VALUES}, counting YAML aliases)")
        if depth > _MAX_DEPTH:
            raise ConfigError(f"{source}: nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        target = data
        for part in parts[:-1]:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"environment {name}: {'.'.join(parts)}: {part} is not a section")
            target = nxt
        target[parts[-1]] = _env_value(raw)


def read_settings_data(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings data of ``path`` (empty if ``None``), expanded and overridden from ``environ``.

    Raises:
        ConfigError: the file is missing or not YAML, or a variable is not set.
    """
    source = str(path) if path is not None else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_document(path, source)
        _check_shape(data, source)
        data = _expand(data, source, "", environ)
    _apply_env(data, environ)
    _check_shape(data, source)
    return data


def _read_document(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the file: {exc}") from None
    try:
        data = _load_yaml(text, source)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except Exception as exc:  # PyYAML's constructors raise plain errors for e.g. "!!int abc"
        raise ConfigError(f"{source}: not valid YAML: {type(exc).__name__} while reading a tagged value") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data
