"""A task's header may name a secret, {"secret": "NAME"}, instead of holding it (issue 12, item 12):
checked when the task is added (422 when it is set nowhere), resolved from the service's
credentials, then the environment variables `[agent] env_secrets` lists (issue 20, item 5: no
other one of the agent's), then `[secrets]` of the config, sent as the real value, and never
stored or shown; a secret gone by delivery time kills the task, naming it, with no attempt
counted and nothing sent."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from support.agentproc import Agent, wait_for

from waystation import logs
from waystation.adapters.tools import HttpRequestTool, ToolRegistry, new_client
from waystation.config import AgentSettings, Paths, Settings
from waystation.config_load import load_settings
from waystation.errors import ConfigError, InvalidArguments
from waystation.ports import Outcome
from waystation.redact import shown_args
from waystation.secrets import SecretResolver
from waystation.station.delivery import Deliveries

TOKEN = "Bearer pay-T0ken-0123456789"
REF = {"secret": "PAYMENTS_TOKEN"}
CONFIG = Path("/etc/waystation/config.toml")
# The environment variables a task may name, as `[agent] env_secrets = [...]` lists them.
LISTED = Settings(agent=AgentSettings(env_secrets=("PAYMENTS_TOKEN",)))


def tool(env: dict[str, str], settings: Settings = LISTED) -> HttpRequestTool:
    return HttpRequestTool(SecretResolver(settings, CONFIG, env))


def args(headers: dict[str, Any], url: str = "https://pay.example/charge") -> dict[str, Any]:
    return {"method": "POST", "url": url, "headers": headers, "json": {"amount": 5}}


# --- validation when the task is added ------------------------------------------------------------


def test_a_reference_is_kept_and_equal_calls_normalize_equal() -> None:
    http = tool({"PAYMENTS_TOKEN": TOKEN})
    valid = http.validate(args({"Authorization": REF, "Accept": "a/b"}), allow_secrets=True)
    assert valid["headers"] == {"authorization": REF, "accept": "a/b"}
    again = http.validate(
        args({"AUTHORIZATION": {"secret": "PAYMENTS_TOKEN"}, "accept": "a/b"}), allow_secrets=True
    )
    assert json.dumps(again) == json.dumps(valid)
    assert TOKEN not in json.dumps(valid)


@pytest.mark.parametrize(
    "ref",
    [{}, {"name": "PAYMENTS_TOKEN"}, {"secret": "PAYMENTS_TOKEN", "x": 1}, {"secret": 5}, {"secret": ["A"]}],
)
def test_a_reference_of_another_shape_is_refused(ref: dict[str, Any]) -> None:
    with pytest.raises(
        InvalidArguments, match=r'a secret reference is \{"secret": "NAME"\} and nothing else'
    ):
        tool({"PAYMENTS_TOKEN": TOKEN}).validate(args({"Authorization": ref}), allow_secrets=True)


@pytest.mark.parametrize("name", ["", "1TOKEN", "../etc/passwd", "a/b", ".hidden", "A B", "X" * 129, "tök"])
def test_a_secret_name_that_is_not_a_plain_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidArguments, match=r"secret name .* must be a letter or _"):
        tool({name: TOKEN}, Settings()).validate(
            args({"Authorization": {"secret": name}}), allow_secrets=True
        )


def test_a_secret_set_nowhere_is_refused_naming_where_to_put_it() -> None:
    with pytest.raises(InvalidArguments) as refused:
        tool({}).validate(args({"Authorization": {"secret": "PAYMENT_TOKEN"}}), allow_secrets=True)
    assert refused.value.http_status == 422
    assert "secret PAYMENT_TOKEN is not set" in refused.value.message
    assert str(CONFIG) in refused.value.message and "LoadCredential=PAYMENT_TOKEN:" in refused.value.message
    assert "that [agent] env_secrets lists" in refused.value.message


@pytest.mark.parametrize("value", ["Bearer a\r\nX-Evil: 1", "Bearer tök", "Bearer a\x00b"])
def test_a_secret_that_is_no_header_value_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(
        InvalidArguments, match="secret PAYMENTS_TOKEN is not a valid header value"
    ) as refused:
        tool({"PAYMENTS_TOKEN": value}).validate(args({"Authorization": REF}), allow_secrets=True)
    assert value not in refused.value.message


def test_a_models_call_cannot_name_a_secret() -> None:
    """A model's calls are validated without allow_secrets: it must not send the host's secrets."""
    with pytest.raises(InvalidArguments, match="must have a string value, not an object"):
        tool({"PAYMENTS_TOKEN": TOKEN}).validate(args({"Authorization": REF}))


# --- where a secret comes from --------------------------------------------------------------------


def test_credentials_beat_the_environment_which_beats_the_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[agent]\nenv_secrets = ["A", "B", "EMPTY"]\n[secrets]\nA = "from-config"\nB = "from-config"\n'
        'C = "from-config"\n'
    )
    settings = load_settings(Paths.resolve({"WAYSTATION_HOME": str(tmp_path)}), {})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "A").write_text("from-credential\n")  # as `echo` writes it: the newline is dropped
    (creds / "EMPTY").write_text("")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "A": "from-env", "B": "from-env", "EMPTY": "from-env"}
    found: list[str] = []
    secrets = SecretResolver(settings, tmp_path / "config.toml", env, found=found.append)
    assert [secrets.resolve(n) for n in ("A", "B", "C", "EMPTY", "D")] == [
        "from-credential",
        "from-env",
        "from-config",
        "from-env",  # an empty credential counts as unset
        None,
    ]
    assert found == ["from-credential", "from-env", "from-config", "from-env"]
    env["B"] = "changed"  # looked up each time: a task waiting hours gets the value current then
    assert secrets.resolve("B") == "changed"


AGENTS_OWN = {
    "HOME": "/home/owner",
    "PATH": "/usr/bin:/bin",
    "HF_TOKEN": "hf_owner0123456789",
    "WAYSTATION_ROUTES__OPENAI__API_KEY": "sk-route-0123456789",
    "WAYSTATION_FLEET__CREDS": "/home/owner/hub.creds",
    "OPENAI_API_KEY": "sk-proj-0123456789abcdef",
    "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-0123456789",
}


@pytest.mark.parametrize("name", sorted(AGENTS_OWN))
def test_a_variable_env_secrets_does_not_list_is_never_a_tasks_secret(name: str) -> None:
    """Issue 20, item 5: anyone on the socket (another uid with socket_group) named HOME, HF_TOKEN
    or WAYSTATION_ROUTES__OPENAI__API_KEY and had it sent where they liked; only what the owner
    lists resolves, and the refusal (422 when the task is added) says how to provide a secret."""
    http = tool({**AGENTS_OWN, "PAYMENTS_TOKEN": TOKEN})
    with pytest.raises(InvalidArguments) as refused:
        http.validate(args({"Authorization": {"secret": name}}), allow_secrets=True)
    assert refused.value.http_status == 422
    assert f"secret {name} " in refused.value.message and "[agent] env_secrets" in refused.value.message
    assert AGENTS_OWN[name] not in refused.value.message
    assert http.validate(args({"Authorization": REF}), allow_secrets=True)["headers"] == {
        "authorization": REF
    }


@pytest.mark.parametrize("name", ["HF_TOKEN", "OPENAI_API_KEY", "WAYSTATION_ROUTES__OPENAI__API_KEY"])
def test_listing_the_agents_own_credential_stops_start_up_naming_it(name: str) -> None:
    settings = Settings(agent=AgentSettings(env_secrets=("PAYMENTS_TOKEN", name)))
    with pytest.raises(ConfigError, match=rf"agent\.env_secrets.*{name} is the agent's own credential"):
        SecretResolver(settings, CONFIG, {})


def test_env_secrets_names_variables(tmp_path: Path) -> None:
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    env = {"WAYSTATION_AGENT__ENV_SECRETS": '["PAYMENTS_TOKEN", "SHIP_KEY"]'}
    assert load_settings(paths, env).agent.env_secrets == ("PAYMENTS_TOKEN", "SHIP_KEY")
    with pytest.raises(ConfigError, match=r"agent\.env_secrets.*'a/b' is not an environment variable"):
        load_settings(paths, {"WAYSTATION_AGENT__ENV_SECRETS": '["a/b"]'})


def test_a_name_never_reaches_outside_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (tmp_path / "outside").write_text("not a credential")
    secrets = SecretResolver(Settings(), CONFIG, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert secrets.resolve("../outside") is None


def test_the_config_file_secrets_table_is_strings_with_plain_names(tmp_path: Path) -> None:
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    (tmp_path / "config.toml").write_text('[secrets]\nPAYMENTS_TOKEN = "Bearer x"\n')
    assert load_settings(paths, {}).secrets == {"PAYMENTS_TOKEN": "Bearer x"}
    (tmp_path / "config.toml").write_text("[secrets]\nPAYMENTS_TOKEN = 123456789\n")
    with pytest.raises(ConfigError, match=r"secrets\.PAYMENTS_TOKEN.*expected a string") as refused:
        load_settings(paths, {})
    assert "123456789" not in refused.value.message  # a mistyped secret is still a secret
    (tmp_path / "config.toml").write_text('[secrets]\n"a/b" = "x"\n')
    with pytest.raises(ConfigError, match="a name is a letter or _"):
        load_settings(paths, {})
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(ConfigError, match="as the environment variable PAYMENTS_TOKEN and list it in"):
        load_settings(paths, {"WAYSTATION_SECRETS__PAYMENTS_TOKEN": "x"})


# --- what outputs and logs show ------------------------------------------------------------------


def test_outputs_show_the_reference_and_still_redact_a_credential() -> None:
    shown = shown_args(args({"authorization": REF, "x-api-key": "k-0123456789"}))
    assert shown["headers"] == {"authorization": REF, "x-api-key": "[redacted]"}


def test_a_resolved_value_never_reaches_a_log_line() -> None:
    stream = io.StringIO()
    logs.configure()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    try:
        secrets = SecretResolver(LISTED, CONFIG, {"PAYMENTS_TOKEN": TOKEN}, found=logs.redact_too)
        assert secrets.resolve("PAYMENTS_TOKEN") == TOKEN
        structlog.get_logger("test").warning("sending", header=f"Authorization: {TOKEN}")
    finally:
        structlog.reset_defaults()
    assert "sending" in stream.getvalue() and TOKEN[7:20] not in stream.getvalue()


# --- delivery -------------------------------------------------------------------------------------


async def test_the_delivery_sends_the_value_current_then(receiver: Any) -> None:
    env = {"PAYMENTS_TOKEN": "Bearer old-0123456789"}
    http = tool(env)
    valid = http.validate(args({"Authorization": REF}, receiver.url("/ok/pay")), allow_secrets=True)
    env["PAYMENTS_TOKEN"] = TOKEN
    async with new_client() as client:
        answer = await http.deliver(client, valid, "key-1", 10.0)
    assert answer.status == 200
    (hit,) = receiver.hits("/ok/pay")
    assert hit.auth == TOKEN


async def test_a_secret_gone_by_delivery_kills_the_task_and_sends_nothing(receiver: Any) -> None:
    env = {"PAYMENTS_TOKEN": TOKEN}
    http = tool(env)
    valid = http.validate(args({"Authorization": REF}, receiver.url("/ok/gone")), allow_secrets=True)
    del env["PAYMENTS_TOKEN"]
    async with new_client() as client:
        sent = await Deliveries(ToolRegistry([http]), client, 10.0)("http_request", valid, "key-2")
    assert sent.outcome == Outcome.DEAD
    assert sent.error is not None and "secret PAYMENTS_TOKEN is not set" in sent.error
    assert receiver.hits("/ok/gone") == []


async def test_a_secret_never_follows_a_redirect_to_another_origin() -> None:
    """X-Pay is not named like a credential, but a secret gave its value: it stays at its origin."""
    seen: list[dict[str, str]] = []

    async def go(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://localhost:{request.url.port}/land")

    async def land(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/go", go)
    app.router.add_post("/land", land)
    http = tool({"PAYMENTS_TOKEN": TOKEN})
    async with TestServer(app, host="127.0.0.1") as server, new_client() as client:
        url = f"http://127.0.0.1:{server.port}/go"
        valid = http.validate(args({"X-Pay": REF, "X-Trace": "t1"}, url), allow_secrets=True)
        answer = await http.deliver(client, valid, "key-3", 10.0)
    assert answer.status == 200
    assert seen == [{**seen[0], "x-trace": "t1"}] and "x-pay" not in seen[0]


async def test_a_destination_echoing_credentials_stores_and_shows_none() -> None:
    """An echo service (or an error page quoting the request) answers with what it got: the
    result that is stored, shown in events and `queue ls` and read by models holds no secret's
    value, nor a credential the outputs hide (a credential header, a URL's credential parameter)."""

    async def echo(request: web.Request) -> web.Response:
        got = {k.lower(): v for k, v in request.headers.items()}
        body = {"headers": got, "url": str(request.url), "query": dict(request.query)}
        return web.json_response(body, headers={"X-Echo": got.get("x-pay", "")})

    app = web.Application()
    app.router.add_post("/echo", echo)
    http = tool({"PAYMENTS_TOKEN": TOKEN})
    async with TestServer(app, host="127.0.0.1") as server, new_client() as client:
        url = f"http://127.0.0.1:{server.port}/echo?sig=AzureS1gnature%2B%3D&page=2"
        headers = {"X-Pay": REF, "X-Api-Key": "literal-K3y-0123"}
        valid = http.validate(args(headers, url), allow_secrets=True)
        answer = await http.deliver(client, valid, "key-4", 10.0)
    echoed = json.loads(answer.body)
    assert answer.status == 200 and echoed["headers"]["x-pay"] == "[redacted]"
    assert echoed["query"] == {"sig": "[redacted]", "page": "2"}
    shown = json.dumps(answer.to_json())
    for value in ("pay-T0ken", "literal-K3y", "AzureS1gnature"):
        assert value not in shown, shown


# --- the real agent -------------------------------------------------------------------------------


def test_through_the_agent_the_value_is_sent_and_never_stored_or_shown(
    agent_factory: Callable[..., Agent], receiver: Any, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "PAYMENTS_TOKEN").write_text(TOKEN + "\n")
    agent = agent_factory(
        {
            "WAYSTATION_CONNECTIVITY__MODE": "offline",
            "CREDENTIALS_DIRECTORY": str(creds),
            "HF_TOKEN": "hf_owner0123456789",  # the agent's own: never a socket client's
        }
    )
    agent.start()
    misspelt = args({"Authorization": {"secret": "PAYMENT_TOKEN"}}, receiver.url("/ok/typo"))
    typo = agent.api("POST", "/v1/tasks", json={"tool": "http_request", "args": misspelt})
    assert typo.status_code == 422, typo.text
    assert "secret PAYMENT_TOKEN is not set" in typo.json()["error"]["message"]
    own = args({"Authorization": {"secret": "HF_TOKEN"}}, receiver.url("/ok/own"))
    refused = agent.api("POST", "/v1/tasks", json={"tool": "http_request", "args": own})
    assert refused.status_code == 422, refused.text
    assert "secret HF_TOKEN is the agent's own credential" in refused.json()["error"]["message"]

    body = {"tool": "http_request", "args": args({"Authorization": REF}, receiver.url("/ok/agent"))}
    created = agent.api("POST", "/v1/tasks", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["args"]["headers"] == {"authorization": REF}
    again = agent.api("POST", "/v1/tasks", json={**body, "idempotency_key": "same"})
    repeated = agent.api("POST", "/v1/tasks", json={**body, "idempotency_key": "same"})
    assert (again.status_code, repeated.status_code) == (201, 200)  # equal calls normalize equal

    agent.set_mode("online")
    wait_for(lambda: len(receiver.hits("/ok/agent")) == 2, 20, what="the deliveries")
    assert {hit.auth for hit in receiver.hits("/ok/agent")} == {TOKEN}
    wait_for(lambda: agent.counts().get("done") == 2, 20, what="both tasks done")
    agent.stop()
    stored = b"".join(p.read_bytes() for p in agent.home.glob("waystation.db*"))
    assert b'"secret":"PAYMENTS_TOKEN"' in stored.replace(b" ", b"")
    assert TOKEN[7:].encode() not in stored
    assert TOKEN[7:] not in agent.log_path.read_text(errors="replace")


def test_through_the_agent_a_secret_gone_by_delivery_kills_the_task_with_no_attempt(
    agent_factory: Callable[..., Agent], receiver: Any, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "PAYMENTS_TOKEN").write_text(TOKEN)
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline", "CREDENTIALS_DIRECTORY": str(creds)})
    agent.start()
    body = {"tool": "http_request", "args": args({"Authorization": REF}, receiver.url("/ok/gone"))}
    created = agent.api("POST", "/v1/tasks", json=body)
    assert created.status_code == 201, created.text
    (creds / "PAYMENTS_TOKEN").unlink()
    agent.set_mode("online")
    task = wait_for(
        lambda: next((t for t in agent.tasks("dead") if t["id"] == created.json()["id"]), None),
        20,
        what="the task to die",
    )
    assert "secret PAYMENTS_TOKEN is not set" in task["last_error"]
    assert task["attempts"] == 0
    assert receiver.hits("/ok/gone") == []
