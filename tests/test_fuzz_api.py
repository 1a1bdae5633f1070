"""Every endpoint fuzzed from its OpenAPI schema (schemathesis) on a real uvicorn server.

The demo app is built like ``kiki-events serve`` builds it (the research team from
``agents/``, without token delay so a streamed run ends quickly), once anonymous and
once behind ``bearer_tokens`` (called with the token, a wrong one and none). Every
response must match the schema (status code, content type, headers, body), no request
may get a 5xx, and every 4xx says what was wrong in ``detail``. Examples are few and
derandomized: CI runs the same cases every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ignored_auth, missing_required_header

from kiki_events.cli import DEMO_GRAPHS
from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from tests.conftest import ROOT
from tests.servers import LiveServer, live_server

# The servers run in this process: their graphs draw from the global ``random`` (LangGraph's
# checkpoint ids) while hypothesis generates a case, which it takes for a strategy using it.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

TOKEN = "fuzz-token"
MAX_EXAMPLES = 10
READ_TIMEOUT = 10.0
CALLERS = {"token": f"Bearer {TOKEN}", "wrong-token": "Bearer not-the-token", "no-token": None}


def demo_app(*, with_auth: bool) -> FastAPI:
    """The app ``kiki-events serve`` runs without a config file."""
    # Few runs at once keep the background work small (and put 429 in play); an SSE stream
    # schemathesis reads is cut after 20 events or READ_TIMEOUT seconds, keep-alives included.
    config = Settings.from_mapping({"graphs": DEMO_GRAPHS, "runs": {"max_active": 4}, "sse": {"keepalive": "1s"}})
    return create_app(config, base_dir=ROOT, auth=bearer_tokens({TOKEN: "alice"}) if with_auth else None)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, LiveServer]]:
    with pytest.MonkeyPatch.context() as patch:
        # The demo graph reads its token delay when it is loaded, i.e. by create_app.
        patch.setenv("KIKI_DEMO_TOKEN_DELAY", "0")
        anonymous, with_auth = demo_app(with_auth=False), demo_app(with_auth=True)
    with live_server(anonymous) as open_server, live_server(with_auth) as auth_server:
        yield {"open": open_server, "auth": auth_server}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def check_error_body(response: Any) -> None:
    """No 5xx; every 4xx is ``{"detail": "<what was wrong>"}``."""
    status = response.status_code
    assert status < 500, f"{status}: {response.text[:500]}"
    if status >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"].strip(), body


fuzzing = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
# Loading the schema does not start the apps (or load the demo graph's module-level delay).
open_schema = schemathesis.openapi.from_dict(demo_app(with_auth=False).openapi())
auth_schema = schemathesis.openapi.from_dict(demo_app(with_auth=True).openapi())


@open_schema.parametrize()
@fuzzing
def test_every_endpoint_answers_as_its_schema_says(
    case: schemathesis.Case, servers: dict[str, LiveServer], session: requests.Session
) -> None:
    response = case.call_and_validate(base_url=servers["open"].url, session=session, timeout=READ_TIMEOUT)
    check_error_body(response)


@auth_schema.parametrize()
@fuzzing
@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_endpoint_with_bearer_tokens(
    case: schemathesis.Case, caller: str, servers: dict[str, LiveServer], session: requests.Session
) -> None:
    authorization = CALLERS[caller]
    if authorization is None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    else:
        case.headers = {**(case.headers or {}), "Authorization": authorization}
    # The header is this test's to set: schemathesis' own auth probes would be overridden by it.
    response = case.call_and_validate(
        base_url=servers["auth"].url,
        session=session,
        timeout=READ_TIMEOUT,
        excluded_checks=[ignored_auth, missing_required_header],
    )
    check_error_body(response)
    if caller != "token" and case.path != "/healthz" and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, response.text


def test_the_schema_declares_every_status_the_api_answers_with() -> None:
    paths = demo_app(with_auth=True).openapi()["paths"]
    declared = {
        (method.upper(), path): set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()
    }
    assert declared == {
        ("POST", "/runs/stream"): {"200", "400", "401", "404", "413", "422", "429", "503"},
        ("POST", "/runs"): {"202", "400", "401", "404", "413", "422", "429", "503"},
        ("GET", "/runs/{run_id}/stream"): {"200", "204", "400", "401", "404", "422", "503"},
        ("GET", "/runs/{run_id}"): {"200", "401", "404", "422", "503"},
        ("POST", "/runs/{run_id}/cancel"): {"200", "202", "401", "404", "422", "503"},
        ("GET", "/threads/{thread_id}/stream"): {"200", "400", "401", "404", "422", "503"},
        ("GET", "/graphs"): {"200", "401"},
        ("GET", "/healthz"): {"200"},
    }
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for (method, path), statuses in declared.items():
        for status in statuses - {"200", "202", "204"}:
            content = paths[path][method.lower()]["responses"][status]["content"]
            assert content == {"application/json": {"schema": error}}, (method, path, status)
    stream = paths["/runs/stream"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
