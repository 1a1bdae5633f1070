"""Redaction of text that leaves the process: credentials are masked, the gist stays."""

from __future__ import annotations

import pytest

from kiki_events.redaction import MASK, redact_error, redact_message, redact_text, redact_url

SECRET = "hunter2-Zx9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"login failed: password={SECRET} for bob", f"login failed: password={MASK} for bob"),
        (f"password = {SECRET}", f"password = {MASK}"),
        (f"REDIS_PASSWORD={SECRET}", f"REDIS_PASSWORD={MASK}"),
        (f"api_key: {SECRET}", f"api_key: {MASK}"),
        (f"x-api-key={SECRET}", f"x-api-key={MASK}"),
        (f"?access_token={SECRET}&page=2", f"?access_token={MASK}&page=2"),
        (f"client_secret: {SECRET}, retry", f"client_secret: {MASK}, retry"),
        (f'{{"token": "{SECRET}", "user": "bob"}}', f'{{"token": "{MASK}", "user": "bob"}}'),
        (f'{{"token":"{SECRET}"}}', f'{{"token":"{MASK}"}}'),
        (f"{{'password': '{SECRET}'}}", f"{{'password': '{MASK}'}}"),
        ('password: "correct horse battery staple"', f'password: "{MASK}"'),
        ("secret='it is a secret'", f"secret='{MASK}'"),
        (f"Cookie: session_id={SECRET}; theme=dark", None),
    ],
)
def test_key_value_credentials_are_masked(text: str, expected: str | None) -> None:
    redacted = redact_text(text)

    assert SECRET not in redacted
    assert "horse" not in redacted and "is a secret" not in redacted
    if expected is not None:
        assert redacted == expected


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {SECRET}.eyJhbGciOiJIUzI1NiJ9",
        f"authorization: bearer {SECRET}",
        "Authorization: Basic dXNlcjpodW50ZXIy",
        f'headers={{"Authorization": "Bearer {SECRET}"}}',
    ],
)
def test_authorization_headers_are_masked(text: str) -> None:
    redacted = redact_text(text)

    assert SECRET not in redacted
    assert "dXNlcjpodW50ZXIy" not in redacted
    assert redacted.lower().startswith(("authorization", "headers"))
    assert MASK in redacted


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"redis://user:{SECRET}@cache:6379/0", f"redis://user:{MASK}@cache:6379/0"),
        (f"rediss://default:{SECRET}@cache.example.com:6380", f"rediss://default:{MASK}@cache.example.com:6380"),
        (f"rediss://:{SECRET}@cache", f"rediss://:{MASK}@cache"),
        (f"postgresql://app:{SECRET}@db/app", f"postgresql://app:{MASK}@db/app"),
    ],
)
def test_url_passwords_are_masked(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_text(f"cannot connect to {url}: refused") == f"cannot connect to {expected}: refused"


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "rediss://cache.example.com:6380", "redis://user@cache", "https://example.com/a:b"]
)
def test_urls_without_a_password_are_unchanged(url: str) -> None:
    assert redact_url(url) == url
    assert redact_text(url) == url


@pytest.mark.parametrize(
    "key",
    [
        "sk-proj-AbCdEfGh12345678",
        "sk-ant-api03-abcdefghijkl_MNOP",
        "sk-lf-1234abcd-5678-90ef",
        "pk-lf-1234abcd-5678-90ef",
        "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "AKIAABCDEFGHIJKLMNOP",
    ],
)
def test_well_known_key_shapes_are_masked(key: str) -> None:
    redacted = redact_text(f"the key {key} was rejected")

    assert redacted == f"the key {MASK} was rejected"


@pytest.mark.parametrize(
    "text",
    [
        "The token count was 5",
        "max_tokens: 4096 exceeds the limit",
        "usage: prompt_tokens=12, completion_tokens=30",
        "author: Alice",
        "authority=example.org",
        "Tool web_search failed: HTTP 503 from https://api.example.com/v1/search",
        "a secret is a secret",
        "passwords must be long",
        "sk-short",
        "ValueError: expected 3 items, got 2",
        "redis://cache:6379",
        "",
        "日本語のテキスト",
    ],
)
def test_harmless_text_is_unchanged(text: str) -> None:
    assert redact_text(text) == text


def test_redaction_is_idempotent() -> None:
    once = redact_text(f"password={SECRET} and Bearer {SECRET} at redis://u:{SECRET}@h")

    assert SECRET not in once
    assert redact_text(once) == once


# -- errors ----------------------------------------------------------------------------------


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:  # the point is to carry a real traceback
        return caught


def test_redact_error_is_one_line_with_the_type_and_no_traceback() -> None:
    error = _raised(ConnectionError(f"cannot reach redis://app:{SECRET}@cache:6379\n  while publishing\tbatch"))
    assert error.__traceback__ is not None

    text = redact_error(error)

    assert text == f"ConnectionError: cannot reach redis://app:{MASK}@cache:6379 while publishing batch"
    assert "\n" not in text
    assert "Traceback" not in text and "File " not in text and __file__ not in text


def test_redact_error_masks_key_value_credentials() -> None:
    text = redact_error(_raised(PermissionError(f"api_key={SECRET} rejected; Authorization: Bearer {SECRET}")))

    assert text.startswith("PermissionError: ")
    assert SECRET not in text


def test_redact_message_is_the_masked_message_without_the_type() -> None:
    error = _raised(RuntimeError(f"writer could not publish: redis://app:{SECRET}@cache:6379\n  retrying"))

    assert redact_message(error) == f"writer could not publish: redis://app:{MASK}@cache:6379 retrying"
    assert redact_error(error) == f"RuntimeError: {redact_message(error)}"
    assert redact_message(RuntimeError("   ")) == ""


def test_redact_error_without_a_message_is_the_type_name() -> None:
    assert redact_error(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert redact_error(RuntimeError("   ")) == "RuntimeError"


@pytest.mark.parametrize("max_chars", [1, 10, 50, 500])
def test_redact_error_truncates_the_message_to_max_chars(max_chars: int) -> None:
    text = redact_error(ValueError("x" * 2000), max_chars=max_chars)

    name, _, message = text.partition(": ")
    assert name == "ValueError"
    assert len(message) == max_chars
    assert message.endswith("…")


def test_redact_error_truncates_by_default_and_keeps_short_messages() -> None:
    assert len(redact_error(ValueError("y" * 5000)).partition(": ")[2]) == 500
    assert redact_error(ValueError("short"), max_chars=5) == "ValueError: short"


def test_redact_error_with_no_room_keeps_nothing_of_the_message() -> None:
    assert redact_error(ValueError(f"password={SECRET}" * 3), max_chars=0) == "ValueError: …"


def test_truncation_cannot_cut_a_secret_in_half_to_slip_it_through() -> None:
    # Redaction happens before truncation: a cut secret prefix would not match any pattern.
    message = "a" * 40 + f" password={SECRET}"

    text = redact_error(ValueError(message), max_chars=len(message) - 3)

    assert "hunter" not in text
