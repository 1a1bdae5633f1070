"""Settings: defaults, the shipped YAML, ${VAR} expansion, env overrides, errors (R6)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kiki_events.config import Settings, load_settings, parse_duration
from kiki_events.errors import ConfigError, KikiEventsError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "eventbus.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kiki.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path | str | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=environ or {})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, KikiEventsError)
    return str(info.value)


# -- loading ------------------------------------------------------------------------------


def test_defaults_load_without_a_file() -> None:
    loaded = load_settings(None, environ={})

    assert loaded == Settings()
    assert loaded.eventbus.provider == "memory"
    assert loaded.eventbus.queue_size == 10000
    assert loaded.eventbus.redis.mode == "pubsub"
    assert loaded.eventbus.publish.timeout == 5.0
    assert loaded.server.port == 8000
    assert loaded.sse.cors_origins == ()
    assert loaded.graphs == {}


def test_the_shipped_config_file_loads() -> None:
    loaded = load_settings(SHIPPED, environ={})

    assert loaded.node is None  # ${KIKI_NODE:-} → empty → host name and pid later
    assert loaded.eventbus.provider == "memory"
    assert loaded.eventbus.redis.addr == "127.0.0.1:6379"
    assert loaded.eventbus.redis.password is None
    assert loaded.eventbus.subscribe.events == (
        "agent:started",
        "agent:completed",
        "agent:failed",
        "agent:tool_call",
        "multiagent:sync",
    )
    assert loaded.eventbus.publish.async_ is True
    assert loaded.sse.keepalive == 15.0
    assert loaded.runs.replay_ttl == 600.0
    assert loaded.graphs == {"research_team": "./agents/research_team.py:graph"}
    assert (loaded.store.enabled, loaded.store.backend, loaded.store.path) == (True, "sqlite", "kiki-history.sqlite")


def test_handoff_concurrency_defaults_to_the_subscriber_workers(tmp_path: Path) -> None:
    assert Settings().handoff.concurrency is None
    assert Settings().handoff_concurrency == Settings().eventbus.subscribe.workers == 4
    assert load_settings(SHIPPED, environ={}).handoff_concurrency == 4

    workers = write(tmp_path, "eventbus: {subscribe: {workers: 7}}\n")
    assert load_settings(workers, environ={}).handoff_concurrency == 7
    overridden = {"KIKI__EVENTBUS__SUBSCRIBE__WORKERS": "9"}
    assert load_settings(workers, environ=overridden).handoff_concurrency == 9

    both = write(tmp_path, "eventbus: {subscribe: {workers: 7}}\nhandoff: {concurrency: 2}\n")
    assert load_settings(both, environ={}).handoff_concurrency == 2
    assert "handoff.concurrency" in config_error(write(tmp_path, "handoff: {concurrency: 0}\n"))


def test_the_shipped_config_file_shows_the_defaults() -> None:
    loaded = load_settings(SHIPPED, environ={})

    # The one difference: the shipped file turns the history on (the demo keeps its runs across restarts).
    assert loaded.store.enabled
    store_off = loaded.store.model_copy(update={"enabled": False})
    assert loaded.model_copy(update={"graphs": {}, "store": store_off}) == Settings()


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing here\n"), environ={}) == Settings()


def test_variables_are_expanded_with_and_without_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        node: ${NODE_NAME}
        eventbus:
          redis:
            addr: ${REDIS_HOST:-localhost}:${REDIS_PORT:-6380}
            channel_prefix: "${TENANT:-acme}:kiki:"
            password: ${REDIS_PASSWORD:-}
        server:
          port: ${PORT:-9100}
        """,
    )

    loaded = load_settings(path, environ={"NODE_NAME": "api-7", "REDIS_HOST": "cache"})

    assert loaded.node == "api-7"
    assert loaded.eventbus.redis.addr == "cache:6380"
    assert loaded.eventbus.redis.channel_prefix == "acme:kiki:"
    assert loaded.eventbus.redis.password is None
    assert loaded.server.port == 9100
    assert load_settings(path, environ={"NODE_NAME": "n", "PORT": "9200"}).server.port == 9200


def test_an_unset_variable_without_default_names_the_key_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "eventbus:\n  redis:\n    password: ${REDIS_PASSWORD}\n")

    message = config_error(path)

    assert message.startswith(str(path))
    assert "eventbus.redis.password" in message
    assert "REDIS_PASSWORD" in message and "not set" in message


def test_variables_in_lists_name_their_position(tmp_path: Path) -> None:
    path = write(tmp_path, "sse:\n  cors_origins: [https://a.example, '${ORIGIN}']\n")

    assert "sse.cors_origins[1]" in config_error(path)
    assert load_settings(path, environ={"ORIGIN": "https://b.example"}).sse.cors_origins == (
        "https://a.example",
        "https://b.example",
    )


def test_environment_overrides_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "eventbus:\n  provider: memory\nserver:\n  port: 8000\n")
    environ = {
        "KIKI__EVENTBUS__PROVIDER": "redis",
        "KIKI__SERVER__PORT": "9001",
        "KIKI__EVENTBUS__REDIS__MODE": "streams",
        "KIKI__SSE__CORS_ORIGINS": "[https://a.example, https://b.example]",
        "KIKI__METRICS__ENABLED": "false",
        "SERVER__PORT": "1",  # no prefix: ignored
    }

    loaded = load_settings(path, environ=environ)

    assert loaded.eventbus.provider == "redis"
    assert loaded.server.port == 9001
    assert loaded.eventbus.redis.mode == "streams"
    assert loaded.sse.cors_origins == ("https://a.example", "https://b.example")
    assert loaded.metrics.enabled is False
    assert load_settings(None, environ={"KIKI__SERVER__PORT": "9001"}).server.port == 9001


def test_environment_overrides_use_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIKI__SERVER__PORT", "9002")

    assert load_settings(None).server.port == 9002


@pytest.mark.parametrize(
    "secret", ["123456", "0x1F", "#not-a-comment", "[bracket", "{brace", "@at", "a: b", "%pct", " x"]
)
def test_secrets_from_the_environment_arrive_unchanged(secret: str) -> None:
    # A password must not be reinterpreted as YAML (an int, a comment, a mapping …).
    assert load_settings(SHIPPED, environ={"REDIS_PASSWORD": secret}).eventbus.redis.password == secret
    overridden = load_settings(None, environ={"KIKI__EVENTBUS__REDIS__PASSWORD": secret})
    assert overridden.eventbus.redis.password == secret


def test_an_override_into_a_value_that_is_not_a_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8000\n")

    message = config_error(path, {"KIKI__SERVER__PORT__NUMBER": "1"})

    assert "KIKI__SERVER__PORT__NUMBER" in message and "port is not a section" in message
    assert "server.port" in config_error(None, {"KIKI__SERVER__PORT__NUMBER": "1"})


def test_an_unknown_override_names_the_key() -> None:
    assert "eventbus.colour: unknown key" in config_error(None, {"KIKI__EVENTBUS__COLOUR": "red"})


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("eventbus:\n  redis:\n    adr: 10.0.0.1:6379\n", "eventbus.redis.adr: unknown key"),
        ("colour: red\n", "colour: unknown key"),
        ("eventbus:\n  queue_size: lots\n", "eventbus.queue_size: Input should be a valid integer"),
        ("server:\n  port: 70000\n", "server.port:"),
        ("eventbus: 5\n", "eventbus: Input should be a valid dictionary"),
        ("eventbus:\n  publish:\n    timeout: fast\n", "eventbus.publish.timeout: expected a duration"),
        ("sse:\n  keepalive: -1s\n", "sse.keepalive"),
        ("sse:\n  keepalive: .inf\n", "sse.keepalive: a duration must be a finite number"),
        ("runs:\n  replay_ttl: .nan\n", "runs.replay_ttl: a duration must be a finite number"),
        ("eventbus:\n  redis:\n    mode: fanout\n", "eventbus.redis.mode: Input should be 'pubsub' or 'streams'"),
        ("sse:\n  slow_client: wait\n", "sse.slow_client"),
        ("eventbus:\n  provider: pulsar\n", "eventbus.provider: provider 'pulsar' is not supported yet"),
        ("eventbus:\n  provider: kafka\n", "eventbus.provider: provider 'kafka' is not supported yet"),
        ("eventbus:\n  provider: carrier-pigeon\n", "unknown provider 'carrier-pigeon'"),
        ("eventbus:\n  subscribe:\n    events: [agent:begun]\n", "unknown topic 'agent:begun'"),
        ("sse:\n  keepalive: ٣s\n", "sse.keepalive: expected a duration such as 5s or 250ms, got '٣s'"),
        ("sse:\n  keepalive: 1" + "0" * 400 + "\n", "sse.keepalive: a duration must be a finite number"),
        ("eventbus:\n  persistence:\n    retention_days: .inf\n", "retention_days: Input should be a finite number"),
        ("no: 1\n", "(top level): the key False is not a string (quote it)"),
        ("graphs:\n  1: ./team.py:graph\n", "graphs: the key 1 is not a string (quote it)"),
        ('"": 1\n', "'': unknown key"),
        ('eventbus:\n  "[key]": 1\n', "eventbus.'[key]': unknown key"),
        ("sse:\n  keep alive: 5s\n", "sse.'keep alive': unknown key"),
    ],
)
def test_invalid_values_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    message = config_error(path)

    assert message.startswith(f"{path}: ")
    assert expected in message


def test_several_problems_are_reported_in_one_error(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "server:\n  port: x\n  host: [1]\n"))

    assert "server.port" in message and "server.host" in message and "1 more" in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    assert config_error(path) == f"{path}: file not found"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    assert "cannot read the file" in config_error(tmp_path)


def test_not_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "eventbus:\n  provider: [memory\nserver: {}\n")

    message = config_error(path)

    assert message.startswith(f"{path}: not valid YAML at line ")
    assert "column" in message


def test_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"node: caf\xe9\n")

    assert "cannot read the file" in config_error(path)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int"), ("just text\n", "str")])
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    assert f"the top level must be a mapping of sections, got {kind}" in config_error(write(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        "node: !!int abc\n",
        "node: !!float abc\n",
        "node: !!timestamp 2001-13-45\n",
        "node: !!int 0b2\n",
        "a: !!bool x\n",
    ],
)
def test_bad_tagged_values_are_config_errors(tmp_path: Path, text: str) -> None:
    assert "not valid YAML" in config_error(write(tmp_path, text))


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]

    assert "too many values" in config_error(write(tmp_path, "\n".join(lines) + "\n"))


@pytest.mark.parametrize("depth", [40, 1000])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int) -> None:
    assert "nested" in config_error(write(tmp_path, "node: " + "[" * depth + "]" * depth + "\n"))


def test_a_bad_password_type_names_the_key_but_never_the_value(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "eventbus:\n  redis:\n    password: 918273645\n"))

    assert "eventbus.redis.password" in message
    assert "918273645" not in message
    langfuse = config_error(write(tmp_path, "langfuse:\n  secret_key: [sk-lf-abcdef123456]\n"))
    assert "langfuse.secret_key" in langfuse and "abcdef123456" not in langfuse


def test_langfuse_settings_load_and_bad_values_name_their_key(tmp_path: Path) -> None:
    text = "langfuse:\n  enabled: true\n  tags: [kiki, prod]\n  sample_rate: 0.25\n  environment: staging\n"
    loaded = load_settings(write(tmp_path, text), environ={}).langfuse

    assert (loaded.enabled, loaded.tags, loaded.sample_rate, loaded.environment) == (
        True,
        ("kiki", "prod"),
        0.25,
        "staging",
    )
    assert (loaded.trace_name, loaded.global_tracer_provider, loaded.public_key) == (None, False, None)
    assert load_settings(write(tmp_path, "langfuse: {enabled: false}\n"), environ={}).langfuse.enabled is False
    for body, key in [
        ("sample_rate: 1.5", "langfuse.sample_rate"),
        ("tags: ['']", "langfuse.tags"),
        ("environment: Langfuse-prod", "langfuse.environment"),
        ("trace_name: 'caf\u00e9'", "langfuse.trace_name"),
    ]:
        assert key in config_error(write(tmp_path, f"langfuse:\n  {body}\n")), body


def test_every_key_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    missing: list[str] = []

    def check(tree: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, sub in tree.items():
            if sub is None:
                rows = [f"| `{key}` |"] + ([f"| `{path[-1]}.{key}` |"] if path else [])
                if not any(row in reference for row in rows):
                    missing.append(".".join((*path, key)))
            elif f"# `{'.'.join((*path, key))}`" in reference:  # a heading of its own
                check(sub, (*path, key))
            else:  # a section without a heading of its own: its keys are rows of the parent's table
                check({f"{key}.{k}": s for k, s in sub.items()}, path)

    check(_key_tree(Settings), ())

    assert missing == []


def test_bearer_tokens_come_from_the_environment_and_never_show(tmp_path: Path) -> None:
    path = write(tmp_path, 'server:\n  auth:\n    bearer_tokens: {alice: "${ALICE_TOKEN}", bob: "${BOB_TOKEN}"}\n')
    alice, bob = "alice-token-5f4dcc3b5aa7", "bob-token-e99a18c428cb3"
    loaded = load_settings(path, environ={"ALICE_TOKEN": alice, "BOB_TOKEN": bob})

    assert loaded.server.auth.bearer_tokens == {"alice": alice, "bob": bob}
    assert alice not in repr(loaded) and alice not in str(loaded.server)
    assert Settings().server.auth.bearer_tokens == {}  # default: anonymous
    override = {"KIKI__SERVER__AUTH__BEARER_TOKENS": f"{{carol: {alice}}}"}
    assert load_settings(None, environ=override).server.auth.bearer_tokens == {"carol": alice}


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ('{alice: "short-secret"}', "the token of 'alice' must be at least 16 characters"),
        ('{alice: "has a space in the secret"}', "without spaces"),
        ('{alice: "same-secret-0123456789", bob: "same-secret-0123456789"}', "also another principal's token"),
        ('{"": "empty-principal-secret-01"}', "invalid principal ''"),
        ("[some-secret-0123456789]", "expected a mapping of principal to token"),
        ("{alice: 918273645918273645}", "the token of 'alice' must be a string"),
    ],
)
def test_bad_bearer_tokens_name_the_problem_but_never_the_token(tmp_path: Path, tokens: str, expected: str) -> None:
    message = config_error(write(tmp_path, f"server:\n  auth:\n    bearer_tokens: {tokens}\n"))

    assert message.startswith(f"{tmp_path / 'kiki.yaml'}: server.auth.bearer_tokens: ")
    assert expected in message
    assert "secret" not in message.partition("bearer_tokens: ")[2]
    assert "918273645918273645" not in message


# -- durations and secrets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("5", 5.0),
        ("5s", 5.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        (" 10 s ", 10.0),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["fast", "5 minutes", "5x", "", "-1s", -1, True, None, [5], "1e3s", float("nan"), float("inf"), "٣s", "５", "1.٥s"],
)
def test_parse_duration_rejects_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_the_redis_password_never_appears_in_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        eventbus:
          provider: redis
          redis:
            username: kiki
            password: ${REDIS_PASSWORD}
        langfuse:
          secret_key: ${LANGFUSE_SECRET}
        """,
    )

    loaded = load_settings(path, environ={"REDIS_PASSWORD": "hunter2-s3cret", "LANGFUSE_SECRET": "sk-lf-topsecret"})

    assert loaded.eventbus.redis.password == "hunter2-s3cret"
    for text in (repr(loaded), str(loaded), repr(loaded.eventbus), repr(loaded.eventbus.redis)):
        assert "hunter2-s3cret" not in text
        assert "sk-lf-topsecret" not in text
    assert "username='kiki'" in repr(loaded.eventbus.redis)


def test_settings_are_immutable() -> None:
    loaded = load_settings(None, environ={})

    with pytest.raises(ValueError, match="frozen"):
        loaded.server.port = 1  # type: ignore[misc]


# -- hypothesis (R6) --------------------------------------------------------------------------

_pieces = st.sampled_from(
    [
        "eventbus",
        "redis",
        "server",
        "sse",
        "port",
        "keepalive",
        "password",
        "provider",
        "graphs",
        ":",
        ": ",
        "\n",
        "  ",
        "    ",
        "\t",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "'",
        '"',
        "#",
        "&a ",
        "*a",
        "!!int ",
        "!!float ",
        "!!binary ",
        "!!python/object ",
        "!!timestamp ",
        "? ",
        "|",
        ">",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "${X}",
        "${UNSET}",
        "${Y:-5s}",
        "5s",
        "1e400",
        ".nan",
        ".inf",
        "-1",
        "true",
        "null",
        "~",
        "0x1F",
        "2001-02-30",
    ]
)
_yamlish = st.one_of(
    st.lists(st.one_of(_pieces, st.text(max_size=4)), max_size=30).map("".join),
    st.text(max_size=60),
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


@given(text=_yamlish)
@settings(max_examples=400, deadline=None)
def test_arbitrary_yamlish_text_loads_or_raises_config_error(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8")
    environ = {"X": "1", "Y": "[a", "KIKI__SERVER__HOST": "0.0.0.0"}

    loaded: Settings | None = None
    message = ""
    try:
        loaded = load_settings(fuzz_file, environ=environ)
    except ConfigError as exc:  # anything else fails the test
        message = str(exc)

    if loaded is None:
        # Names the file, or the environment variable that could not be applied.
        assert message.startswith((f"{fuzz_file}: ", "environment KIKI__SERVER__HOST: "))
    else:
        assert loaded.server.host == "0.0.0.0"


# -- Redis settings checked before anything starts ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "rediss://tenant-a:pw@cache.example.com:6380/3?ssl_cert_reqs=none",
        "redis://:pw@[::1]:6379/1",
        "redis://redis_1:6379?db=2",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_well_formed_redis_urls_are_accepted(tmp_path: Path, url: str) -> None:
    loaded = load_settings(write(tmp_path, f"eventbus:\n  redis:\n    url: '{url}'\n"), environ={})

    assert loaded.eventbus.redis.url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://u:hunter2@127.0.0.1:notaport/0", "port 'notaport' is not an integer"),
        ("redis://:hunter2@[::1/0", "the host is not well-formed"),
        ("redis://:hunter2@[::zz]:6379/0", "host '[::zz]' is not a valid IPv6 address"),
        ("redis://:hunter2@127.0.0.1:0/0", "port 0 is out of range"),
        ("redis://:hunter2@:6379/0", "no host"),
        ("redis://:hunter2@h:6379/-1", "database '-1' is not an integer"),
        ("redis://:hunter2@h:6379?db=one", "database 'one' is not an integer"),
        ("redis://:hunter2@h:6379/²", "database '²' is not an integer"),
        ("redis://:hunter2@h:٦٣٧٩/0", "port '٦٣٧٩' is not an integer"),
        ("unix://", "a unix:// URL needs the socket's path"),
        ("hunter2", "expected a URL such as redis://"),
    ],
)
def test_a_malformed_redis_url_names_the_key_and_the_problem_but_not_the_password(
    tmp_path: Path, url: str, problem: str
) -> None:
    path = write(tmp_path, f"eventbus:\n  redis:\n    url: '{url}'\n")

    message = config_error(path)

    assert message.startswith(f"{path}: eventbus.redis.url: {problem}")
    assert "hunter2" not in message


def test_a_malformed_redis_url_from_the_environment_is_refused_too() -> None:
    shipped = ROOT / "config" / "redis.yaml"

    message = config_error(shipped, {"REDIS_URL": "redis://:hunter2@127.0.0.1:notaport/0"})

    assert "eventbus.redis.url: port 'notaport'" in message and "hunter2" not in message
    assert load_settings(shipped, environ={"REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}).eventbus.redis.db == 0


@pytest.mark.parametrize("value", ["true", "1.5", "2.0", "one", "-1", "[0]", "'²'", "'٣'"])
def test_the_redis_db_must_be_an_integer(tmp_path: Path, value: str) -> None:
    assert "eventbus.redis.db: expected a database number" in config_error(
        write(tmp_path, f"eventbus:\n  redis:\n    db: {value}\n")
    )


def test_the_redis_db_may_come_from_the_environment() -> None:
    assert load_settings(None, environ={"KIKI__EVENTBUS__REDIS__DB": "3"}).eventbus.redis.db == 3
    assert "eventbus.redis.db" in config_error(None, {"KIKI__EVENTBUS__REDIS__DB": "three"})


@pytest.mark.parametrize(
    ("addr", "problem"),
    [
        ("cache", "expected host:port"),
        ("cache:x", "port 'x'"),
        (":6379", "expected host:port"),
        ("a b:1", "host 'a b'"),
        ("cache:²", "port '²' is not an integer"),
        ("cache:٦٣٧٩", "port '٦٣٧٩' is not an integer"),
        ("cache:1234567", "port 1234567 is out of range"),
    ],
)
def test_a_malformed_redis_addr_names_the_key(tmp_path: Path, addr: str, problem: str) -> None:
    path = write(tmp_path, f"eventbus:\n  redis:\n    addr: '{addr}'\n")

    assert f"eventbus.redis.addr: {problem}" in config_error(path)


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("node: a\nnode: b\n", "node", 2, 1),
        (
            "eventbus:\n  redis:\n    url: redis://h:1/0\n    db: 0\n    url: redis://h:2/0\n",
            "eventbus.redis.url",
            5,
            3,
        ),
        ("graphs:\n  team: ./a.py:graph\n  team: ./b.py:graph\n", "graphs.team", 3, 2),
        ("sse:\n  cors_origins:\n    - {a: 1, a: 2}\n", "sse.cors_origins[0].a", 3, 3),
        ("eventbus: {provider: redis}\neventbus: {provider: memory}\n", "eventbus", 2, 1),
    ],
)
def test_a_key_written_twice_is_refused_naming_its_path_and_lines(
    tmp_path: Path, text: str, key: str, line: int, first: int
) -> None:
    path = write(tmp_path, text)

    assert config_error(path) == f"{path}: {key}: duplicate key at line {line} (first at line {first})"


def test_keys_merged_from_an_anchor_are_not_duplicates(tmp_path: Path) -> None:
    text = "server:\n  <<: {port: 9000, host: 0.0.0.0}\n  port: 9001\n"

    loaded = load_settings(write(tmp_path, text), environ={})

    assert (loaded.server.host, loaded.server.port) == ("0.0.0.0", 9001)


def test_serving_agents_needs_redis(tmp_path: Path) -> None:
    path = write(tmp_path, "handoff:\n  serve: [writer]\n")

    assert config_error(path) == (
        f"{path}: handoff.serve: serving agents to other nodes needs eventbus.provider: redis (it is 'memory')"
    )
    disabled = write(tmp_path, "eventbus: {provider: redis, enabled: false}\nhandoff: {serve: [writer]}\n")
    assert "handoff.serve" in config_error(disabled) and "eventbus.enabled is false" in config_error(disabled)
    served = write(tmp_path, "eventbus: {provider: redis}\nhandoff: {serve: [writer]}\n")
    assert load_settings(served, environ={}).handoff.serve == ("writer",)


# -- any settings mapping ------------------------------------------------------------------


def _key_tree(model: type[BaseModel]) -> dict[str, Any]:
    """Every key of a settings section: name → its sub-tree (a section) or None (a value)."""
    tree: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        tree[field.alias or name] = _key_tree(kind) if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return tree


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["5s", "250ms", "٣s", "²", "①", "1e3", "-1", "0x1F", "redis", "pubsub", "${X}", "${UNSET}", "${Y:-7}"]
    ),
    st.dates(),
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _mapping(tree: dict[str, Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """Mappings shaped like the settings (known keys, some unknown), with any values."""
    entries = [
        st.tuples(st.just(key), _values if sub is None else st.one_of(_mapping(sub), _values))
        for key, sub in tree.items()
    ]
    odd_key = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none())
    entries.append(st.tuples(odd_key, _values))
    return st.lists(st.one_of(entries), max_size=4).map(dict)


@given(data=_mapping(_key_tree(Settings)))
@settings(max_examples=300, deadline=None)
def test_any_settings_mapping_loads_or_raises_config_error_naming_a_key(fuzz_file: Path, data: dict[Any, Any]) -> None:
    fuzz_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    for source, load in (
        (str(fuzz_file), lambda: load_settings(fuzz_file, environ={"X": "1"})),
        ("settings", lambda: Settings.from_mapping(data)),
    ):
        try:
            loaded = load()
        except ConfigError as exc:  # anything else fails the test
            message = str(exc)
            assert message.startswith(f"{source}: "), message
            named = message.removeprefix(f"{source}: ")
            # The key path starts with a key of the document (quoted unless plain, like ``''``).
            keys = [str(k) if not isinstance(k, str) or re.fullmatch(r"[A-Za-z0-9_-]+", k) else repr(k) for k in data]
            at_top = [f"(top level): the key {k!r} is not a string" for k in data if not isinstance(k, str)]
            assert any(named.startswith((f"{k}: ", f"{k}.", f"{k}[", *at_top)) for k in keys), (message, data)
        else:
            assert isinstance(loaded, Settings)


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"": "${UNSET_VAR}"}, "'': environment variable UNSET_VAR is not set"),
        ({"server": {"odd key": "${UNSET_VAR}"}}, "server.'odd key': environment variable UNSET_VAR is not set"),
    ],
)
def test_an_unset_variable_under_an_odd_key_names_the_key_quoted(
    tmp_path: Path, document: dict[str, Any], named: str
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})

    assert str(caught.value).startswith(f"{path}: {named}")


def test_every_provider_the_settings_accept_has_a_transport_builder() -> None:
    from kiki_events.config import PROVIDERS
    from kiki_events.runtime.build import PROVIDERS as BUILDERS

    assert set(BUILDERS) == set(PROVIDERS)
    for provider in PROVIDERS:
        assert Settings.model_validate({"eventbus": {"provider": provider}}).eventbus.provider == provider
