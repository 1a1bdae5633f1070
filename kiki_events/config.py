"""Settings: one YAML file switches every layer.

``load_settings(path)`` reads YAML, expands ``${VAR}`` and ``${VAR:-default}``,
applies environment overrides (``KIKI__SECTION__KEY=value``, e.g.
``KIKI__EVENTBUS__PROVIDER=redis``) and validates. Any problem is one
:class:`~kiki_events.errors.ConfigError` naming the file, the key and the problem,
raised before anything starts.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .topics import TOPICS

__all__ = [
    "AuthSettings",
    "EventBusSettings",
    "HandlerSettings",
    "HandoffSettings",
    "LangfuseSettings",
    "LoggingSettings",
    "MetricsSettings",
    "RedisSettings",
    "RunSettings",
    "SSESettings",
    "Settings",
    "check_redis_url",
    "load_settings",
    "parse_duration",
    "resolve_concurrency",
]

ENV_PREFIX = "KIKI__"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DATABASE = re.compile(r"[0-9]{1,9}")
"""A Redis database number: ASCII digits (``str.isdigit`` also takes ``²``, which ``int`` refuses)."""
# ``[0-9]``, not ``\d``: a duration is written in ASCII digits (``\d`` also matches ``٣``).
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_KEYS = frozenset({"password", "secret_key", "url", "bearer_tokens"})
"""Keys whose invalid values are never quoted back in an error message (they may hold credentials)."""
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_MAX_VALUES = 10_000
"""Values a settings document may hold once YAML aliases are followed."""
_MAX_DEPTH = 32


def parse_duration(value: object) -> float:
    """``5``, ``"5s"``, ``"250ms"``, ``"2m"``, ``"1h"``, ``"7d"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 250ms, got a boolean")
    if isinstance(value, int | float):
        # An int beyond any float (YAML reads them) is as infinite as ``.inf``.
        seconds = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as 5s or 250ms, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _KeyProblem(ValueError):
    """A problem of the whole settings that belongs to one key (``key``), for the error message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _database(value: object) -> object:
    """A Redis database number: an integer (or its digits, from an environment variable), never a bool or float."""
    if isinstance(value, str) and _DATABASE.fullmatch(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"expected a database number (an integer, 0 or more), got {value!r}")


def _port(text: str, what: str) -> int:
    # ASCII digits only: ``str.isdigit`` also takes ``²`` or ``٣``, which ``int`` refuses.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{what} {text!r} is not an integer")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"{what} {text[:20]} is out of range (1-65535)")
    return int(text)


def _check_host(host: str) -> None:
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1].split("%", 1)[0])
        except ValueError:
            raise ValueError(f"host {host!r} is not a valid IPv6 address in brackets") from None
    elif not _HOST_NAME.match(host):
        raise ValueError(f"host {host!r} is not a valid host name or address")


def check_redis_url(url: str) -> None:
    """Check a Redis URL the way it will be used: scheme, host, port and database.

    Raises:
        ValueError: what is wrong; the message never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        raise ValueError("expected a URL such as redis://[user:password@]host:6379/0 (or rediss://, unix://)")
    location, _, query = rest.partition("?")
    netloc, slash, path = location.partition("/")
    if scheme.lower() == "unix":
        path = netloc + slash + path
        if not path:
            raise ValueError("a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock")
        path = ""  # a socket path is not a database
    else:
        hostport = netloc.rpartition("@")[2]  # what follows the credentials, if any
        if hostport.startswith("["):
            host, bracket, port = hostport.partition("]")
            host += bracket
            if not bracket or (port and not port.startswith(":")):
                raise ValueError("the host is not well-formed (an IPv6 address is written [address]:port)")
            port = port[1:]
        else:
            host, _, port = hostport.partition(":")
        if not host:
            raise ValueError("no host (expected redis://[user:password@]host:6379/0)")
        _check_host(host)
        if port:
            _port(port, "port")
    database = path.strip("/")
    for key, value in (pair.partition("=")[::2] for pair in query.split("&") if pair):
        if key == "db":
            database = value
    if database and not _DATABASE.fullmatch(database):
        raise ValueError(f"database {database!r} is not an integer")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RedisSettings(_Section):
    """Where and how to reach Redis (used when ``eventbus.provider`` is ``redis``)."""

    url: str | None = None
    """Full URL (``redis://`` or ``rediss://`` for TLS); overrides ``addr``/``db``."""
    addr: str = "127.0.0.1:6379"
    username: str | None = None
    """ACL user."""
    password: str | None = Field(default=None, repr=False)
    db: Annotated[int, BeforeValidator(_database)] = 0
    tls: bool = False
    channel_prefix: str = "kiki:"
    mode: Literal["pubsub", "streams"] = "pubsub"

    @field_validator("password", "username", "url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_redis_url(value)
        return value

    @field_validator("addr")
    @classmethod
    def _valid_addr(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port, got {value!r}")
        _check_host(host)
        _port(port, "port")
        return value


class PublishSettings(_Section):
    enabled: bool = True
    async_: bool = Field(default=True, alias="async")
    timeout: Duration = 5.0
    flush_interval: Duration = 0.002
    """Longest time an event waits to be batched with others before publishing."""
    batch_size: int = Field(default=256, ge=1, le=100_000)
    """Most events in one cross-node message; a run with more pending is flushed at once."""
    outbox_size: int = Field(default=100_000, ge=1)
    """Events waiting to leave the node (e.g. while Redis is down); beyond it new ones are dropped and counted."""
    max_message_bytes: int = Field(default=1 << 20, ge=4096, le=512 << 20)
    """Largest cross-node message sent or accepted; larger ones are dropped and counted."""

    @field_validator("flush_interval")
    @classmethod
    def _short_flush(cls, value: float) -> float:
        if value > 1.0:
            raise ValueError("flush_interval longer than 1s would hold events back; use a few ms")
        return value


class SubscribeSettings(_Section):
    events: tuple[str, ...] = TOPICS[:4] + TOPICS[5:]
    """Lifecycle topics received from other nodes; empty: none (run traffic still flows on demand)."""
    workers: int = Field(default=4, ge=1, le=256)
    """The number of subscriber workers: how many tasks of one agent served to other
    nodes this node runs at once (the default of ``handoff.concurrency``)."""
    interest_linger: Duration = 5.0
    """How long a node keeps receiving a remote run after its last local reader left (quick reconnects)."""
    repair_timeout: Duration = 1.0
    """How long a gap in a remote run may wait to be repaired before readers are told events were missed."""

    @field_validator("events")
    @classmethod
    def _known_topics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic in value:
            if topic not in TOPICS and not topic.endswith("*"):
                raise ValueError(f"unknown topic {topic!r}; known topics: {', '.join(TOPICS)}")
        return value


class PersistenceSettings(_Section):
    enabled: bool = False
    storage: Literal["redis"] = "redis"
    retention_days: float = Field(default=7, gt=0, allow_inf_nan=False)
    """Streams mode: how long a finished run's stream (and registry entry) is kept."""
    run_ttl: Duration | None = None
    """Overrides ``retention_days`` per run, e.g. ``2h``."""
    stream_maxlen: int = Field(default=10_000, ge=16)
    """Approximate bound of each run stream, in messages (each holds up to ``publish.batch_size`` events)."""

    @field_validator("run_ttl")
    @classmethod
    def _positive_ttl(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise ValueError("run_ttl must be at least 1s")
        return value


class EventBusSettings(_Section):
    """The seed's ``eventbus`` section."""

    enabled: bool = True
    provider: str = "memory"
    queue_size: int = Field(default=10000, ge=1)
    """Bound of each subscription's queue."""
    inbox_size: int = Field(default=65536, ge=1)
    """Bound of the cross-thread hand-off buffer."""
    redis: RedisSettings = RedisSettings()
    publish: PublishSettings = PublishSettings()
    subscribe: SubscribeSettings = SubscribeSettings()
    persistence: PersistenceSettings = PersistenceSettings()

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if value in ("memory", "redis"):
            return value
        if value in ("pulsar", "kafka", "nats", "rabbitmq"):
            raise ValueError(f"provider {value!r} is not supported yet (supported: memory, redis)")
        raise ValueError(f"unknown provider {value!r} (supported: memory, redis)")


class SSESettings(_Section):
    keepalive: Duration = 15.0
    """Interval of keep-alive comment lines."""
    retry: Duration = 2.0
    """Reconnect delay sent to browsers (``retry:``)."""
    send_timeout: Duration = 30.0
    """A client that accepts nothing for this long is dropped and its connection reset."""
    slow_client: Literal["skip", "disconnect"] = "skip"
    """A client that falls behind (out of the replay window, or more than ``max_backlog``
    events): skip ahead with a ``lagging`` notice, or disconnect."""
    max_backlog: int | None = Field(default=10000, ge=16)
    """Events of a live run a client may have waiting undelivered before ``slow_client``
    applies (its initial replay does not count); empty: only the replay window counts."""
    max_body_bytes: int = Field(default=262144, ge=1024)
    cors_origins: tuple[str, ...] = ()


class RunSettings(_Section):
    on_disconnect: Literal["continue", "cancel"] = "continue"
    replay_events: int = Field(default=20000, ge=16)
    """Events of one run kept for join and resume."""
    replay_ttl: Duration = 600.0
    """How long a finished run stays joinable."""
    max_runs: int = Field(default=10000, ge=1)
    """Runs kept (live and finished); the oldest finished are forgotten first."""
    max_active: int = Field(default=256, ge=1)
    """Runs executing at once; more get 429."""
    shutdown_grace: Duration = 10.0
    thread_ttl: Duration = 7 * 86400.0
    """How long a thread stays its owner's after its last run started or ended (another
    principal gets 404 for it meanwhile); keep it at least as long as your checkpointer
    keeps a thread. With a bridge it is also the least lifetime of the thread's owner in Redis."""
    max_threads: int = Field(default=100_000, ge=1)
    """Thread owners a node remembers; beyond it the threads idle longest are forgotten first."""


class HandlerSettings(_Section):
    max_payload_chars: int = Field(default=4000, ge=64)
    """Tool inputs/outputs and custom data longer than this are truncated in events."""


class HandoffSettings(_Section):
    """Agents across nodes (needs ``eventbus.provider: redis``); see :mod:`kiki_events.handoff`."""

    serve: tuple[str, ...] = ()
    """Agents (graph names) this node runs for other nodes."""
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    """Tasks of one agent this node runs at once; not set: ``eventbus.subscribe.workers``
    (see :attr:`Settings.handoff_concurrency`)."""
    timeout: Duration = 300.0
    """Default time a delegating caller waits for the result."""
    pickup_timeout: Duration = 5.0
    """How long a task may wait for a node to pick it up before serving nodes are checked again."""
    claim_idle: Duration = 30.0
    """A task silent this long (its node died) is reclaimed by another node."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Deliveries of one task before it moves to the dead-letter stream."""
    heartbeat: Duration = 2.0
    """Interval of a serving node's advertisement and of its running tasks' keep-alive."""
    advertise_ttl: Duration = 10.0
    """A node that stops heartbeating stops counting as serving after this long."""
    result_ttl: Duration = 600.0
    """How long results and done markers are kept in Redis."""
    max_input_bytes: int = Field(default=1 << 20, ge=1024)
    max_output_bytes: int = Field(default=256 * 1024, ge=1024)
    """Larger final states are replaced by the last message's text."""

    @field_validator("serve")
    @classmethod
    def _agent_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name or len(name) > 200 or any(c.isspace() or c in "{}" for c in name):
                raise ValueError(f"invalid agent name {name!r} (no spaces or braces, at most 200 characters)")
        return value


class MetricsSettings(_Section):
    enabled: bool = True
    path: str = "/metrics"


class LangfuseSettings(_Section):
    enabled: bool = False
    public_key: str | None = None
    secret_key: str | None = Field(default=None, repr=False)
    base_url: str | None = None


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    log_content: bool = False
    """Log prompt/output text (off by default)."""


_MIN_TOKEN_CHARS = 16


class AuthSettings(_Section):
    """Authentication of the ready-made server (``kiki-events serve``)."""

    bearer_tokens: dict[str, str] = Field(default_factory=dict, repr=False)
    """Principal → API token (``Authorization: Bearer <token>``), e.g.
    ``{alice: "${ALICE_TOKEN}"}``. Empty: every request is anonymous."""

    @field_validator("bearer_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: object) -> object:
        # Checked here, whole, so that no error message ever quotes a token.
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping of principal to token, got a {type(value).__name__}")
        seen: set[str] = set()
        for principal, token in value.items():
            if not isinstance(principal, str) or not principal.strip() or len(principal) > 200:
                raise ValueError(f"invalid principal {principal!r} (a non-empty name of at most 200 characters)")
            if not isinstance(token, str):
                raise ValueError(f"the token of {principal!r} must be a string, not a {type(token).__name__}")
            if len(token) < _MIN_TOKEN_CHARS or token != token.strip() or any(c.isspace() for c in token):
                raise ValueError(
                    f"the token of {principal!r} must be at least {_MIN_TOKEN_CHARS} characters without spaces"
                )
            if token in seen:
                raise ValueError(f"the token of {principal!r} is also another principal's token")
            seen.add(token)
        return dict(value)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    dashboard: bool = True
    auth: AuthSettings = AuthSettings()
    body_timeout: Duration = 5.0
    """Longest time a request body may take to arrive; slower ones get 408."""

    @field_validator("body_timeout")
    @classmethod
    def _positive_body_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("body_timeout must be more than 0s")
        return value


class Settings(_Section):
    """The whole configuration."""

    node: str | None = None
    """Name of this process in events (default: host name and pid)."""
    eventbus: EventBusSettings = EventBusSettings()
    sse: SSESettings = SSESettings()
    runs: RunSettings = RunSettings()
    handler: HandlerSettings = HandlerSettings()
    handoff: HandoffSettings = HandoffSettings()
    metrics: MetricsSettings = MetricsSettings()
    langfuse: LangfuseSettings = LangfuseSettings()
    logging: LoggingSettings = LoggingSettings()
    server: ServerSettings = ServerSettings()
    graphs: dict[str, str] = Field(default_factory=dict)
    """Graph name → reference like ``./agents/research_team.py:graph``."""

    @model_validator(mode="after")
    def _serving_needs_redis(self) -> Settings:
        bus = self.eventbus
        if self.handoff.serve and (bus.provider != "redis" or not bus.enabled):
            raise _KeyProblem(
                "handoff.serve",
                f"serving agents to other nodes needs eventbus.provider: redis (it is {bus.provider!r}"
                + ("" if bus.enabled else ", and eventbus.enabled is false")
                + ")",
            )
        return self

    @property
    def handoff_concurrency(self) -> int:
        """Tasks of one agent this node runs at once: ``handoff.concurrency``, else ``eventbus.subscribe.workers``."""
        return resolve_concurrency(self.handoff, self.eventbus)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> Settings:
        """Validate a mapping; raises :class:`ConfigError` naming the key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None


def resolve_concurrency(handoff: HandoffSettings, eventbus: EventBusSettings) -> int:
    """``handoff.concurrency`` if it is set, else ``eventbus.subscribe.workers``."""
    return handoff.concurrency if handoff.concurrency is not None else eventbus.subscribe.workers


def _key_part(part: object) -> str:
    # An empty key or one with spaces, dots or colons is quoted, so the message still says which.
    if isinstance(part, str) and not _PLAIN_KEY.fullmatch(part):
        return repr(part)
    return str(part)


def _describe(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        # pydantic names a bad key by appending it and "[key]" (or with ``invalid_key``); a key
        # spelled "[key]" in the file is not one.
        marked = len(loc) >= 2 and loc[-1] == "[key]" and loc[-2] == err.get("input")
        key_error = err["type"] == "invalid_key" or marked
        if key_error:  # a key that YAML read as a number or a boolean (``no:``, ``1:``)
            loc = loc[:-2] if marked else loc[:-1]
        key = ".".join(_key_part(p) for p in loc) or "(top level)"
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _KeyProblem):
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
        return {k: _expand(v, source, ".".join(filter(None, (path, _key_part(k)))), env) for k, v in value.items()}
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


def load_settings(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, expand and validate settings from ``path`` (defaults only if ``None``).

    Raises:
        ConfigError: the file is missing, not YAML, or a key is unknown or invalid.
    """
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "defaults"
    data: Any = {}
    if path is not None:
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
        _check_shape(data, source)
        data = _expand(data, source, "", env)
    _apply_env(data, env)
    _check_shape(data, source)
    return Settings.from_mapping(data, source=source)
