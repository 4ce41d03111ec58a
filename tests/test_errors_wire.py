"""Errors across the socket: what the agent raises, the command line catches with its fields.

An error goes out as `to_json()` (code, message, and `details`, the arguments its constructor
took) and comes back through `rebuild_error`, which builds it again with that constructor: the
same class, message, fields, HTTP status and exit code. Checked for every class of errors.py from
sample arguments, and for real answers of a real agent (not found, idempotency conflict, invalid
transition, refused route, unusable model). An older agent's answer without details still
rebuilds as its class with its message; an unknown code is a RemoteError.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.agentproc import Agent

from waystation import errors
from waystation.cli.client import BASE_URL, AgentClient, RemoteError, rebuild_error
from waystation.cli.commands.turn import _through_agent
from waystation.cli.common import Progress
from waystation.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidTransition,
    ModelError,
    NotFound,
    RouteOffline,
    RouteRefused,
    WaystationError,
)

URL = "http://127.0.0.1:9/x"  # the discard port: nothing is sent while offline

# A value for each kind of constructor argument the tree has (by its annotation).
SAMPLES: dict[str, Callable[[str], Any]] = {
    "str": lambda name: f"{name} value",
    "object": lambda name: f"/var/lib/{name}",
    "list[str]": lambda name: ["b_tool", "a_tool"],
    "int": lambda name: 7,
    "int | None": lambda name: 3,
    "float": lambda name: 2.5,
    "float | None": lambda name: 1.5,
    "bool": lambda name: True,
}


def tree() -> list[type[WaystationError]]:
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, WaystationError) and cls.__module__ == errors.__name__
    ]


def sample(cls: type[WaystationError]) -> WaystationError:
    """`cls` built with a sample value for every argument its constructor takes, defaults too."""
    arguments = {}
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        make = SAMPLES.get(str(parameter.annotation))
        assert make is not None, f"{cls.__name__}({parameter}): add a sample for its type"
        arguments[parameter.name] = make(parameter.name)
    return cls(**arguments)


def over_the_wire(error: WaystationError) -> WaystationError:
    """What the command line makes of the agent's answer with `error`."""
    body = json.loads(json.dumps(error.to_json()))["error"]
    return rebuild_error(body["code"], body["message"], error.http_status, body.get("details"))


@pytest.mark.parametrize("cls", tree(), ids=lambda cls: cls.__name__)
def test_every_error_keeps_its_constructor_arguments_and_rebuilds_from_them(
    cls: type[WaystationError],
) -> None:
    error = sample(cls)
    fields = set(errors.constructor_fields(cls)) - {"message"}
    assert set(error.details()) == fields, "each constructor argument is kept under its own name"

    rebuilt = over_the_wire(error)
    # RouteOffline shares RouteRefused's code: the class that defines a code is the one rebuilt.
    assert type(rebuilt) is (RouteRefused if cls is RouteOffline else cls)
    assert rebuilt.message == error.message and str(rebuilt) == str(error)
    assert rebuilt.details() == error.details()
    assert (rebuilt.code, rebuilt.http_status, rebuilt.exit_code) == (
        error.code,
        error.http_status,
        error.exit_code,
    )
    assert rebuilt.to_json() == json.loads(json.dumps(error.to_json()))


def test_the_structured_fields_survive() -> None:
    found = over_the_wire(NotFound("task", "t_9"))
    assert isinstance(found, NotFound) and (found.kind, found.ident) == ("task", "t_9")

    refused = over_the_wire(RouteRefused("openai", "no API key", auth_lane="api_key", cost_lane="byok"))
    assert isinstance(refused, RouteRefused) and refused.exit_code == 4
    assert (refused.route, refused.reason) == ("openai", "no API key")
    assert (refused.auth_lane, refused.cost_lane) == ("api_key", "byok")

    conflict = over_the_wire(IdempotencyConflict("order-42", "t_1"))
    assert isinstance(conflict, IdempotencyConflict) and conflict.http_status == 409
    assert (conflict.key, conflict.task_id) == ("order-42", "t_1")

    transition = over_the_wire(InvalidTransition("t_2", "done", "cancel"))
    assert isinstance(transition, InvalidTransition)
    assert (transition.task_id, transition.state, transition.action) == ("t_2", "done", "cancel")

    config = ConfigError("queue.max_attempts", "must be greater than 0, got 0")
    assert config.to_json()["error"] == {
        "code": "config_error",
        "message": "config: queue.max_attempts: must be greater than 0, got 0",
        "details": {"key": "queue.max_attempts", "problem": "must be greater than 0, got 0"},
    }
    rebuilt = over_the_wire(config)
    assert isinstance(rebuilt, ConfigError) and rebuilt.key == "queue.max_attempts"
    assert rebuilt.problem == "must be greater than 0, got 0" and rebuilt.message == config.message


def test_errors_without_fields_send_no_details() -> None:
    assert errors.MalformedRequest("request body must be a JSON object").to_json() == {
        "error": {"code": "malformed_request", "message": "request body must be a JSON object"}
    }
    assert "details" not in errors.EmptyPrompt().to_json()["error"]


def test_an_older_agents_answer_without_details_rebuilds_with_its_message() -> None:
    old = rebuild_error("not_found", "no task with id 'x'", 404)
    assert isinstance(old, NotFound) and old.message == "no task with id 'x'" and old.http_status == 404
    assert old.details() == {}  # the fields were never sent
    with pytest.raises(AttributeError):
        _ = old.ident
    plain = rebuild_error("malformed_request", "prompt must be a string", 400)
    assert isinstance(plain, errors.MalformedRequest) and str(plain) == "prompt must be a string"
    assert isinstance(rebuild_error("empty_prompt", "say something", 400), errors.EmptyPrompt)


def test_details_that_do_not_fit_fall_back_to_the_message() -> None:
    for details in ({"kind": "task"}, {"kind": "task", "ident": "x", "extra": 1}, ["x"], "x"):
        error = rebuild_error("not_found", "no task with id 'x'", 404, details)
        assert isinstance(error, NotFound) and error.message == "no task with id 'x'"
    bad_number = rebuild_error(
        "provider_error", "route 'a': busy", 502, {"route": "a", "status": 429, "retry_after_s": "soon"}
    )
    assert isinstance(bad_number, errors.ProviderError) and bad_number.message == "route 'a': busy"
    # Another version words the message otherwise: the fields from the details, the words as sent.
    reworded = rebuild_error("not_found", "task t_1: gone", 404, {"kind": "task", "ident": "t_1"})
    assert isinstance(reworded, NotFound) and reworded.ident == "t_1"
    assert reworded.message == str(reworded) == "task t_1: gone"


def test_an_unknown_code_is_a_remote_error_with_what_was_sent() -> None:
    other = rebuild_error("brand_new_code", "something new", 418, {"why": "new"})
    assert isinstance(other, RemoteError)
    assert (other.code, other.http_status, other.exit_code) == ("brand_new_code", 418, 1)
    assert other.to_json() == {
        "error": {"code": "brand_new_code", "message": "something new", "details": {"why": "new"}}
    }


def answering(body: dict[str, Any], status: int) -> AgentClient:
    """An AgentClient whose agent always gives this answer."""
    client = AgentClient(Path("/nonexistent/waystation.sock"))
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    client._client = httpx.Client(transport=transport, base_url=BASE_URL)
    return client


def test_the_client_reads_details_from_an_error_answer() -> None:
    body = IdempotencyConflict("k1", "t_7").to_json()
    with answering(body, 409) as client, pytest.raises(IdempotencyConflict) as caught:
        client.request("POST", "/v1/tasks", json={})
    assert (caught.value.key, caught.value.task_id) == ("k1", "t_7")

    old_style = {"error": {"code": "invalid_transition", "message": "cannot cancel task t_1: it is done"}}
    with answering(old_style, 409) as client, pytest.raises(InvalidTransition) as old:
        client.request("POST", "/v1/tasks/t_1/cancel")
    assert old.value.message == "cannot cancel task t_1: it is done"


class StreamingAgent:
    """Stands in for AgentClient.stream_sse: a streamed turn that fails with `error`."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error

    def stream_sse(self, method: str, path: str, json: Any = None, *_: Any) -> Iterator[tuple[str, Any]]:
        yield "token", {"text": ""}
        yield "error", self.error


def test_a_streamed_turns_error_event_rebuilds_with_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    sent = RouteRefused("claude", "not signed in", auth_lane="seat", cost_lane="provider_subscription")
    with pytest.raises(RouteRefused) as caught:
        _through_agent(StreamingAgent(sent.to_json()["error"]), {}, True, Progress("", False), None)
    assert (caught.value.route, caught.value.reason, caught.value.auth_lane) == (
        "claude",
        "not signed in",
        "seat",
    )
    assert caught.value.exit_code == 4 and caught.value.message == sent.message

    old_style = {"code": "route_refused", "message": sent.message}
    with pytest.raises(RouteRefused) as old:
        _through_agent(StreamingAgent(old_style), {}, True, Progress("", False), None)
    assert old.value.message == sent.message


# --- a real agent ----------------------------------------------------------------------------------


@pytest.fixture
def agent(agent_factory: Callable[..., Agent]) -> Agent:
    return agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()


def test_a_real_agents_errors_arrive_with_their_fields(agent: Agent) -> None:
    with AgentClient(agent.socket) as client:
        with pytest.raises(NotFound) as missing:
            client.request("GET", "/v1/tasks/t_missing")
        assert (missing.value.kind, missing.value.ident) == ("task", "t_missing")
        assert missing.value.message == "no task with id 't_missing'"

        body = {"tool": "http_request", "args": {"url": URL}, "idempotency_key": "k1"}
        task = client.request("POST", "/v1/tasks", json=body)
        with pytest.raises(IdempotencyConflict) as conflict:
            client.request("POST", "/v1/tasks", json={**body, "args": {"url": URL + "/2"}})
        assert (conflict.value.key, conflict.value.task_id) == ("k1", task["id"])

        client.request("POST", f"/v1/tasks/{task['id']}/cancel")
        with pytest.raises(InvalidTransition) as transition:
            client.request("POST", f"/v1/tasks/{task['id']}/cancel")
        assert transition.value.task_id == task["id"]
        assert (transition.value.state, transition.value.action) == ("cancelled", "cancel")

        with pytest.raises(RouteRefused) as refused:
            client.request("POST", "/v1/turns", json={"prompt": "hi", "route": "openai"})
        assert refused.value.route == "openai" and refused.value.reason
        assert refused.value.auth_lane == "api_key" and refused.value.exit_code == 4
        assert refused.value.message == f"route 'openai' refused the turn: {refused.value.reason}"

        with pytest.raises(ModelError) as model:
            client.request("POST", "/v1/turns", json={"prompt": "hi", "model": "/nonexistent/m.gguf"})
        assert model.value.path == "/nonexistent/m.gguf" and model.value.problem
