"""A PostgreSQL database of the test's own on the local server (or ``KIKI_TEST_POSTGRES_DSN``'s), dropped after.

Without a reachable server the tests that use it skip, unless ``KIKI_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

__all__ = ["postgres_dsn"]

POSTGRES_ENV = "KIKI_TEST_POSTGRES_DSN"
REQUIRE_POSTGRES_ENV = "KIKI_REQUIRE_POSTGRES"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A DSN of a fresh database on the local PostgreSQL (or ``KIKI_TEST_POSTGRES_DSN``'s server), dropped after."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    admin = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"PostgreSQL is unreachable at {admin} and {REQUIRE_POSTGRES_ENV}=1: {exc}")
        pytest.skip(f"PostgreSQL is unreachable at {admin} (set {POSTGRES_ENV} to point at one): {exc}")
    name = f"kiki_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
