"""The published OpenAPI document: valid, served by the agent, and true of the live agent.

schemathesis generates requests (valid and malformed) from `GET /v1/openapi.json` for every
operation but the ones that run a model turn or never end (/v1/events), sends them to a real
agent over its Unix socket, and checks: no 5xx, every answer's status, content type and body as
the document says. The agent must still be alive and answering at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.agentproc import free_port
from support.inproc import InProcessAgent, inprocess_agent

from waystation.agent.openapi import openapi_document

MAX_EXAMPLES = 30
# Model turns; a stream that never ends; downloads from wherever a generated source points
# (tests/test_models_pull.py sends it malformed bodies instead); /mcp's `ask` runs turns too
# (tests/test_mcp_serve.py drives it with the official MCP SDK).
NOT_FUZZED = ["/v1/turns", "/v1/chat/completions", "/v1/responses", "/v1/events", "/v1/models/pull", "/mcp"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_dict(openapi_document()).exclude(path=NOT_FUZZED)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module")
def agent() -> Iterator[InProcessAgent]:
    with inprocess_agent(
        {
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
            # Were the fuzzer to switch the mode to auto, the probe finds nothing: still offline.
            "WAYSTATION_CONNECTIVITY__PROBE_URL": f"http://127.0.0.1:{free_port()}/generate_204",
        }
    ) as agent:
        yield agent


@pytest.fixture(scope="module")
def http(agent: InProcessAgent) -> Iterator[httpx.Client]:
    with agent.client() as client:
        yield client


def send(http: httpx.Client, case: schemathesis.Case) -> httpx.Response:
    """Send a generated case over the socket (schemathesis's own transport speaks TCP only)."""
    kwargs = case.as_transport_kwargs(base_url="http://waystation")
    body: dict[str, object] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif isinstance(kwargs.get("data"), bytes | str):
        body["content"] = kwargs["data"]
    elif kwargs.get("data") is not None:
        body["data"] = kwargs["data"]
    return http.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
        cookies=kwargs.get("cookies") or None,
        **body,  # type: ignore[arg-type]
    )


def test_document_is_valid_openapi() -> None:
    validate(openapi_document())  # type: ignore[arg-type]


def test_document_is_served_and_covers_every_route(agent: InProcessAgent) -> None:
    answer = agent.api("GET", "/v1/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    assert document == openapi_document()
    served = {
        (r.method, r.resource.canonical)
        for r in _app_routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert served == documented


def _app_routes() -> list[object]:
    from unittest import mock

    from waystation.agent.api import create_app

    return list(create_app(mock.Mock()).router.routes())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_the_live_agent(case: schemathesis.Case, http: httpx.Client) -> None:
    if case.path_parameters and case.path_parameters.get("id") == "verify":
        return  # /v1/receipts/verify is its own route
    response = send(http, case)
    case.validate_response(response, checks=CHECKS)


def test_agent_survived_the_fuzzing(agent: InProcessAgent, http: httpx.Client) -> None:
    assert agent.running(), agent.output()
    answer = http.get("/v1/status")
    assert answer.status_code == 200, answer.text
    assert agent.api("GET", "/v1/receipts/verify").json()["ok"] is True
    assert "Traceback" not in agent.output()


def test_document_names_the_paths_it_needs() -> None:
    paths = openapi_document()["paths"]
    for path in ("/v1/tasks", "/v1/tasks/{id}", "/v1/receipts", "/v1/connectivity", "/v1/events"):
        assert path in paths
    post = paths["/v1/tasks"]["post"]
    assert {"201", "200", "409", "422", "413", "400"} <= set(post["responses"])
