"""Every endpoint fuzzed from its OpenAPI schema (schemathesis) on a real uvicorn server.

The demo app is built like ``kiki-events serve`` builds it (the research team from
``agents/`` under its name, without token delay so a streamed run ends quickly), once
anonymous and once behind ``bearer_tokens`` (called with the token, a wrong one and
none). Every response must match the schema (status code, content type, headers,
body), no request may get a 5xx, and every 4xx says what was wrong in ``detail``.
Besides single requests, workflows follow the schema's links from a started run.
Examples are few and derandomized, so CI generates the same cases every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
)

from kiki_events.cli.serve import DEMO_GRAPHS
from kiki_events.config import Settings
from kiki_events.server import bearer_tokens, create_app
from tests.conftest import load_demo
from tests.servers import LiveServer, live_server

# The servers run in this process: their graphs draw from the global ``random`` (LangGraph's
# checkpoint ids) while hypothesis generates a case, which it takes for a strategy using it.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

TOKEN = "fuzz-token"
MAX_EXAMPLES = 10
READ_TIMEOUT = 10.0
THREAD_READ = 2.0
WORKFLOWS = 10
CALLERS = {"token": f"Bearer {TOKEN}", "wrong-token": "Bearer not-the-token", "no-token": None}


def demo_app(*, with_auth: bool) -> FastAPI:
    """The app ``kiki-events serve`` runs without a config file: the demo research team, the dashboard."""
    # The team is built here rather than loaded by path: the module's ``graph`` reads
    # KIKI_DEMO_TOKEN_DELAY once, and this suite may have loaded it before with the default delay.
    team = load_demo("research_team").build_graph(token_delay=0.0)
    # An SSE stream schemathesis reads is cut after 20 events or its timeout, keep-alives included;
    # a run whose stream was cut is cancelled rather than left running in the background.
    config = Settings.from_mapping({"sse": {"keepalive": "1s"}, "runs": {"on_disconnect": "cancel"}})
    auth = bearer_tokens({TOKEN: "alice"}) if with_auth else None
    return create_app(config, graphs=dict.fromkeys(DEMO_GRAPHS, team), auth=auth)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, LiveServer]]:
    with live_server(demo_app(with_auth=False)) as open_server, live_server(demo_app(with_auth=True)) as auth_server:
        yield {"open": open_server, "auth": auth_server}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def timeout(case: schemathesis.Case) -> float:
    """Seconds to wait for a response; a thread stream never ends, so only its first events are read."""
    return THREAD_READ if case.operation.path == "/threads/{thread_id}/stream" else READ_TIMEOUT


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


# Building an app for its schema starts nothing: a runtime starts with its app's lifespan.
def _our_format_only(document: dict[str, Any]) -> dict[str, Any]:
    """The document with ``?format=`` limited to ours: the SSE item schemas describe our frames.

    Every other format's frames are checked by its own tests against its protocol (for
    AG-UI, the protocol's own models).
    """
    for item in document["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                schema = param.get("schema", {})
                if param.get("name") == "format" and param.get("in") == "query" and "kiki" in schema.get("enum", ()):
                    schema["enum"] = ["kiki"]
    return document


open_schema = schemathesis.openapi.from_dict(_our_format_only(demo_app(with_auth=False).openapi()))
auth_schema = schemathesis.openapi.from_dict(_our_format_only(demo_app(with_auth=True).openapi()))


@open_schema.parametrize()
@fuzzing
def test_every_endpoint_answers_as_its_schema_says(
    case: schemathesis.Case, servers: dict[str, LiveServer], session: requests.Session
) -> None:
    response = case.call(base_url=servers["open"].url, session=session, timeout=timeout(case))
    case.validate_response(response, excluded_checks=_semantic(response))
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
    response = case.call(base_url=servers["auth"].url, session=session, timeout=timeout(case))
    case.validate_response(response, excluded_checks=[ignored_auth, missing_required_header, *_semantic(response)])
    check_error_body(response)
    if caller != "token" and case.path != "/healthz" and case.method.upper() == case.operation.method.upper():
        assert response.status_code == 401, response.text


@pytest.mark.parametrize("with_auth", [False, True], ids=["anonymous", "token"])
def test_workflows_along_the_schema_links(servers: dict[str, LiveServer], with_auth: bool) -> None:
    """Start runs, then follow the links of ``202``: status, join, cancel, the thread, with fuzzed parameters."""
    url = servers["auth" if with_auth else "open"].url
    headers = {"Authorization": f"Bearer {TOKEN}"} if with_auth else {}

    class Workflow((auth_schema if with_auth else open_schema).as_state_machine()):
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": url, "headers": headers, "timeout": timeout(case)}

        def validate_response(self, response: Any, case: schemathesis.Case, *args: Any, **kwargs: Any) -> None:
            # As above: the Authorization header is this test's to set, so a case generated without it
            # is sent with it; and unknown query parameters are ignored (as by any FastAPI endpoint):
            # a "negative" case of either kind is a valid request.
            excluded = [ignored_auth, missing_required_header, negative_data_rejection]
            excluded += _semantic(response)
            if _cursor_of_another_run(response, case):
                # The schema cannot say that a cursor must name the run of the path: a linked
                # run id with a fuzzed cursor of another run is a schema-valid request the API
                # rightly refuses (400, checked by check_error_body).
                excluded.append(positive_data_acceptance)
            case.validate_response(response, excluded_checks=excluded, transport_kwargs=kwargs)
            check_error_body(response)

    Workflow.run(
        settings=settings(
            max_examples=WORKFLOWS,
            stateful_step_count=4,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# History parameters whose form the schema cannot pin down: a cursor the API did not make, a time
# that is no date (``0000-00-00``). A schema-valid request with one is rightly refused (422, naming it).
_SEMANTIC = ("query.cursor:", "query.since:", "query.until:")


def _semantic(response: Any) -> list[Any]:
    """``[positive_data_acceptance]`` when ``response`` refuses a history parameter of that kind."""
    if response.status_code != 422:
        return []
    detail = response.json().get("detail", "")
    return [positive_data_acceptance] if isinstance(detail, str) and detail.startswith(_SEMANTIC) else []


def _cursor_of_another_run(response: Any, case: schemathesis.Case) -> bool:
    if case.operation.path != "/runs/{run_id}/stream" or response.status_code != 400:
        return False
    detail = response.json().get("detail", "")
    return isinstance(detail, str) and detail.startswith("Last-Event-ID points into run ")


def test_the_schema_declares_every_status_the_api_answers_with() -> None:
    paths = demo_app(with_auth=True).openapi()["paths"]
    declared = {
        (method.upper(), path): set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()
    }
    assert declared == {
        ("POST", "/runs/stream"): {"200", "400", "401", "404", "406", "408", "413", "422", "429", "503"},
        ("POST", "/runs"): {"202", "400", "401", "404", "408", "413", "422", "429", "503"},
        ("GET", "/runs/{run_id}/stream"): {"200", "204", "400", "401", "404", "406", "422", "503"},
        ("GET", "/runs/{run_id}"): {"200", "401", "404", "422", "503"},
        ("POST", "/runs/{run_id}/cancel"): {"200", "202", "401", "404", "422", "503"},
        ("GET", "/runs"): {"200", "401", "422", "503"},
        ("GET", "/runs/{run_id}/events"): {"200", "401", "404", "422", "503"},
        ("GET", "/runs/{run_id}/causation"): {"200", "401", "404", "422", "503"},
        ("GET", "/threads/{thread_id}/events"): {"200", "401", "404", "422", "503"},
        ("GET", "/events"): {"200", "401", "422", "503"},
        ("GET", "/events/{event_id}/causation"): {"200", "401", "404", "422", "503"},
        ("GET", "/threads/{thread_id}/stream"): {"200", "400", "401", "404", "406", "422", "503"},
        ("GET", "/threads/{thread_id}/state"): {"200", "401", "404", "422", "503"},
        ("POST", "/ag-ui/{graph}"): {"200", "400", "401", "404", "408", "413", "422", "429", "503"},
        ("POST", "/ai-sdk/{graph}"): {"200", "400", "401", "404", "408", "413", "422", "429", "503"},
        ("GET", "/ai-sdk/{graph}/{chat_id}/stream"): {"200", "204", "401", "404", "422", "503"},
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
    links = paths["/runs"]["post"]["responses"]["202"]["links"]
    assert {link["operationId"] for link in links.values()} == {
        "run_status",
        "join_run_stream",
        "cancel_run",
        "thread_stream",
        "thread_state",
    }
