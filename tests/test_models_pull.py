"""`waystation models pull|ls|ps|rm` and the models API, against a loopback Hugging Face hub.

The hub (tests/fakehub.py) speaks the download protocol `huggingface_hub` uses with HF_ENDPOINT
set: a HEAD on `/{repo}/resolve/main/{file}`, a redirect to a CDN on another origin, the file's
sha256 as its ETag. End to end, it serves the embedded SmolLM2 GGUF, which then answers a real
llama.cpp turn by its new name. The faults are real too: a connection cut mid-file (the next
pull resumes with Range), bytes that do not hash to what the hub vouches for, a wrong --sha256.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Agent, agent_env, sse_events, started_agent
from support.fakehub import FakeHub, HubFile, fake_gguf

from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.store import check_name, default_name
from waystation.errors import MalformedRequest

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
SMOL = "SmolLM2-135M-Instruct-Q4_1.gguf"
TOKEN = "hf_sEcReT0123456789abcdefTOKEN"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.files[f"{REPO}/{SMOL}"] = HubFile(default_model_path().read_bytes())
        yield hub


def hf_env(hub: FakeHub, tmp: Path, **extra: str) -> dict[str, str]:
    """The hub's endpoint, no token but the one a test gives (none from this machine's own)."""
    return {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / "hf-home"), "HF_TOKEN": "", **extra}


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = agent_env(home, env)
    if not environment.get("HF_TOKEN"):
        environment.pop("HF_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "waystation", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- names ---------------------------------------------------------------------------------------


def test_a_default_name_comes_from_the_file_name() -> None:
    assert default_name("SmolLM2-135M-Instruct-Q8_0.gguf") == "smollm2-135m-instruct-q8_0"
    assert default_name("sub/dir/Llama 3.2 (1B).GGUF") == "llama-3.2-1b"
    assert default_name("....gguf") is None
    assert check_name("My-Model") == "my-model"
    for bad in ("embedded", "a/b", "../x", "x.gguf", ".hidden", ""):
        with pytest.raises(MalformedRequest):
            check_name(bad)


def test_models_put_there_by_hand_are_named_models_too(tmp_path: Path) -> None:
    from waystation.adapters.models import choose_backend
    from waystation.adapters.models.store import ModelStore
    from waystation.adapters.routes.local import LocalRoute
    from waystation.config import ModelSettings
    from waystation.errors import UnknownModel

    store = ModelStore(tmp_path / "models")
    (tmp_path / "models" / "mlx-smol").mkdir(parents=True)
    (tmp_path / "models" / "mlx-smol" / "config.json").write_text("{}")
    (tmp_path / "models" / "hand.gguf").write_bytes(fake_gguf(100))
    (tmp_path / "models" / "stray.json").write_text("{}")  # a record with no model: not a model
    listed = [(m.name, m.format, m.source) for m in store.all()]
    assert listed == [("hand", "gguf", None), ("mlx-smol", "mlx", None)]
    route = LocalRoute(ModelSettings(path="hand"), models=store)
    assert route.model_path() == tmp_path / "models" / "hand.gguf"
    assert route.model_path("MLX-Smol") == tmp_path / "models" / "mlx-smol"
    assert choose_backend(route.model_path("mlx-smol"), "auto") == "mlx"
    assert route.model_path("embedded") == default_model_path()
    with pytest.raises(UnknownModel):
        route.model_path("stray")


# --- with no agent: the command line pulls into the state directory itself -----------------------


def test_an_interrupted_download_is_resumed_by_the_next_pull(
    hub: FakeHub, home: Path, tmp_path: Path
) -> None:
    content = fake_gguf(3_000_000, seed=1)
    sha = hashlib.sha256(content).hexdigest()
    hub.files["acme/tiny/tiny-Q8_0.gguf"] = HubFile(content)
    hub.drop_after[f"/blobs/{sha}"] = 1_200_000
    env = hf_env(hub, tmp_path)

    first = cli(home, "models", "pull", "hf:acme/tiny/tiny-Q8_0.gguf", env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "the same pull resumes it" in first.stderr
    kept = files_under(home / "models" / ".partial")
    had = kept[0].stat().st_size if kept else 0
    assert [p.name for p in kept] == [f"{sha}.partial", f"{sha}.partial.json"] and 0 < had < len(content)
    listed = json.loads(cli(home, "models", "ls", "--json").stdout)
    assert listed["data"][0]["id"] == "embedded"
    assert listed["waystation"]["partial"] == [
        {"name": "tiny-q8_0", "source": "hf:acme/tiny/tiny-Q8_0.gguf", "size": had, "path": str(kept[0])}
    ]
    assert (
        f"  tiny-q8_0  {had / 1e6:.1f} MB so far  hf:acme/tiny/tiny-Q8_0.gguf"
        in cli(home, "models", "ls").stdout
    )

    second = cli(home, "models", "pull", "hf:acme/tiny/tiny-Q8_0.gguf", "--json", env=env)
    assert second.returncode == 0, second.stderr
    model = json.loads(second.stdout)
    assert model["id"] == "tiny-q8_0" and model["owned_by"] == "acme"
    assert model["waystation"]["sha256"] == sha and model["waystation"]["verified"] is True
    blobs = [s for s in hub.requests(f"/blobs/{sha}") if s.method == "GET"]
    assert [s.range for s in blobs] == [None, f"bytes={had}-"]
    assert (home / "models" / "tiny-q8_0.gguf").read_bytes() == content
    assert files_under(home / "models") == [home / "models/tiny-q8_0.gguf", home / "models/tiny-q8_0.json"]


def test_a_file_that_is_not_what_the_hub_vouches_for_is_refused(
    hub: FakeHub, home: Path, tmp_path: Path
) -> None:
    served = fake_gguf(500_000, seed=2)
    hub.files["acme/bad/bad.gguf"] = HubFile(served, sha256=hashlib.sha256(b"the real file").hexdigest())
    done = cli(home, "models", "pull", "hf:acme/bad/bad.gguf", env=hf_env(hub, tmp_path))
    assert done.returncode == 1
    assert "does not match" in done.stderr and hashlib.sha256(served).hexdigest() in done.stderr
    assert files_under(home / "models") == []


def test_a_url_pull_with_a_wrong_sha256_leaves_nothing_behind(hub: FakeHub, home: Path) -> None:
    content = fake_gguf(400_000, seed=3)
    hub.plain["plain-Model.gguf"] = content
    wrong = hashlib.sha256(b"something else").hexdigest()
    done = cli(home, "models", "pull", hub.file_url("plain-Model.gguf"), "--sha256", wrong)
    assert done.returncode == 1 and "does not match" in done.stderr, done.stderr
    assert files_under(home / "models") == []

    right = hashlib.sha256(content).hexdigest()
    done = cli(home, "models", "pull", hub.file_url("plain-Model.gguf"), "--sha256", right, "--name", "Mine")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"pulled mine (400.0 KB, sha256 {right[:12]}")
    listed = json.loads(cli(home, "models", "ls", "--json").stdout)["data"]
    mine = next(m for m in listed if m["id"] == "mine")
    assert mine["waystation"]["source"] == hub.file_url("plain-Model.gguf")
    assert mine["waystation"]["verified"] is True

    default = cli(home, "models", "ls", env={"WAYSTATION_MODEL__PATH": "mine"})
    assert default.stdout.splitlines()[1].split()[:3] == ["mine", "*", "400.0"]

    removed = cli(home, "models", "rm", "mine")
    assert removed.returncode == 0 and removed.stdout.strip() == "removed mine"
    assert files_under(home / "models") == []
    again = cli(home, "models", "rm", "mine")
    assert again.returncode == 1 and "no model named 'mine'; `waystation models ls`" in again.stderr


def test_a_download_that_is_not_a_gguf_file_is_refused(hub: FakeHub, home: Path) -> None:
    hub.plain["page.gguf"] = b"<html>" + b"x" * 10_000
    done = cli(home, "models", "pull", hub.file_url("page.gguf"))
    assert done.returncode == 1 and "not a GGUF model file" in done.stderr
    assert list((home / "models").iterdir()) == []


def test_an_unknown_model_name_says_where_names_come_from(home: Path) -> None:
    done = cli(home, "turn", "--model", "llama3.2", "hi")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: no model named 'llama3.2'; "
        "`waystation models ls` lists them, `waystation models pull` gets one"
    )


def test_models_commands_without_the_agent(home: Path) -> None:
    group = cli(home, "models")
    assert group.returncode == 2
    for name in ("pull", "ls", "ps", "rm"):
        assert name in group.stdout
    assert cli(home, "models", "ps").returncode == 3  # what is loaded lives in the agent
    listed = cli(home, "models", "ls")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].startswith("embedded *")
    assert sorted(p.name for p in home.iterdir()) == []  # a read makes no database, no models/


# --- through the agent -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    # The agent has the hub's endpoint but no token: a gated pull gets the command line's. A
    # process, not the in-process tier: huggingface_hub reads HF_ENDPOINT once, at import.
    env = hf_env(hub, tmp_path_factory.mktemp("agent-hf"))
    env["WAYSTATION_CONNECTIVITY__MODE"] = "offline"
    with started_agent(env) as agent:
        yield agent


def test_a_pulled_model_answers_a_turn_by_its_name(agent: Agent, hub: FakeHub, tmp_path: Path) -> None:
    done = cli(agent.home, "models", "pull", f"hf:{REPO}/{SMOL}", env=hf_env(hub, tmp_path))
    assert done.returncode == 0, done.stderr + agent.output()
    assert done.stdout.startswith("pulled smollm2-135m-instruct-q4_1 (98.4 MB, sha256 ")
    assert (agent.home / "models" / "smollm2-135m-instruct-q4_1.gguf").stat().st_size == 98_362_432

    listed = agent.api("GET", "/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["embedded", "smollm2-135m-instruct-q4_1"]
    assert listed["data"][0]["waystation"]["default"] is True
    assert {"id", "object", "created", "owned_by"} <= set(listed["data"][1])

    turn = agent.api(
        "POST",
        "/v1/turns",
        json={"prompt": "Say hello.", "model": "smollm2-135m-instruct-q4_1", "max_tokens": 8},
    )
    assert turn.status_code == 200, turn.text
    assert turn.json()["text"]
    receipt = agent.api("GET", f"/v1/receipts/{turn.json()['receipt_id']}").json()
    assert receipt["route"]["model"] == "smollm2-135m-instruct-q4_1"

    loaded = json.loads(cli(agent.home, "models", "ps", "--json").stdout)
    assert [(m["name"], m["backend"], m["size"]) for m in loaded] == [
        ("smollm2-135m-instruct-q4_1", "llamacpp", 98_362_432)
    ]
    assert loaded[0]["unloads_at"] and loaded[0]["busy"] is False
    # Its memory: the weights and a KV cache for 4096 tokens (30 layers x 3 KV heads x 128 x f16)
    # for each of the 4 sequences `[model] parallel` generates at once.
    assert loaded[0]["memory"] == 98_362_432 + 4 * 94_371_840
    shown = cli(agent.home, "models", "ps").stdout
    assert "smollm2-135m-instruct-q4_1" in shown and "475.8 MB" in shown

    removed = agent.api("DELETE", "/v1/models/smollm2-135m-instruct-q4_1")
    assert removed.json() == {"id": "smollm2-135m-instruct-q4_1", "object": "model", "deleted": True}
    assert agent.api("GET", "/v1/models/loaded").json() == []
    assert files_under(agent.home / "models") == []


def test_hf_token_goes_to_the_hub_only_and_is_never_shown(agent: Agent, hub: FakeHub, tmp_path: Path) -> None:
    content = fake_gguf(300_000, seed=4)
    hub.files["gated-org/gated/model.gguf"] = HubFile(content)
    hub.gated["gated-org/gated"] = TOKEN

    refused = cli(agent.home, "models", "pull", "hf:gated-org/gated/model.gguf", env=hf_env(hub, tmp_path))
    assert refused.returncode == 1 and "gated" in refused.stderr and "HF_TOKEN" in refused.stderr

    env = hf_env(hub, tmp_path, HF_TOKEN=TOKEN)
    done = cli(agent.home, "models", "pull", "hf:gated-org/gated/model.gguf", "--json", env=env)
    assert done.returncode == 0, done.stderr
    heads = [s for s in hub.requests("/gated-org/") if s.method == "HEAD"]
    assert heads[-1].auth == f"Bearer {TOKEN}"
    assert all(s.auth is None for s in hub.requests("/blobs/"))  # the CDN is another origin
    seen = done.stdout + done.stderr + agent.output()
    seen += "".join(p.read_text(errors="replace") for p in files_under(agent.home / "models"))
    seen += json.dumps(agent.api("GET", "/v1/models").json())
    assert TOKEN not in seen
    assert agent.api("DELETE", "/v1/models/model").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"[]", 400, "must be a JSON object"),
        (b"{}", 400, "source must be"),
        (b'{"source": 7}', 400, "source must be"),
        (b'{"source": "ftp://example.com/m.gguf"}', 400, "hf:OWNER/REPO/FILE or an http(s) URL"),
        (b'{"source": "hf:only-owner"}', 400, "hf:OWNER/REPO/FILE"),
        (b'{"source": "http://127.0.0.1:9/m.gguf", "sha256": "abc"}', 400, "64 hexadecimal"),
        (b'{"source": "http://127.0.0.1:9/m.gguf", "name": "a/b"}', 400, "cannot name a model"),
        (b'{"source": "http://127.0.0.1:9/m.gguf", "name": "embedded"}', 400, "cannot name a model"),
        (b'{"source": "hf:acme/none/missing.gguf"}', 502, "has no file 'missing.gguf'"),
        (b'{"source": "hf:acme--x/none/m.gguf"}', 400, "is not a Hugging Face repository id"),
    ],
)
def test_malformed_pulls_are_refused_before_any_stream(
    agent: Agent, body: bytes, status: int, says: str
) -> None:
    answer = agent.api("POST", "/v1/models/pull", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert says in answer.json()["error"]["message"]


def test_removing_what_is_not_there(agent: Agent) -> None:
    unknown = agent.api("DELETE", "/v1/models/no-such-model")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert agent.api("DELETE", "/v1/models/embedded").status_code == 409


def test_a_turn_on_an_unknown_model_is_a_clear_404(agent: Agent) -> None:
    answer = agent.api("POST", "/v1/turns", json={"prompt": "hi", "model": "llama3.2"})
    assert answer.status_code == 404
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == "model_not_found"
    assert "`waystation models pull` gets one" in error["message"]


def pull_events(agent: Agent, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with agent.client() as client, client.stream("POST", "/v1/models/pull", json=body) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/event-stream"
        return [(found.event, found.data) for found in sse_events(answer.iter_lines())]


def test_a_pull_over_the_api_streams_progress_then_the_model(agent: Agent, hub: FakeHub) -> None:
    content = fake_gguf(2_500_000, seed=5)
    hub.plain["Api-Model.gguf"] = content
    body = {"source": hub.file_url("Api-Model.gguf"), "sha256": hashlib.sha256(content).hexdigest()}
    events = pull_events(agent, body)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "done" and set(kinds) == {"progress", "done"}
    statuses = [data["status"] for kind, data in events if kind == "progress"]
    assert statuses[-2:] == ["verifying", "success"] and "downloading" in statuses
    assert events[-2][1] == {"status": "success", "completed": len(content), "total": len(content)}
    model = events[-1][1]
    assert model["id"] == "api-model" and model["waystation"]["verified"] is True
    assert "api-model" in [m["id"] for m in agent.api("GET", "/v1/models").json()["data"]]

    again = pull_events(agent, body)  # the same file again: nothing to download
    assert [kind for kind, _ in again] == ["progress", "done"] and again[0][1]["status"] == "up to date"

    hub.plain["other.gguf"] = fake_gguf(1000, seed=6)
    taken = agent.api(
        "POST", "/v1/models/pull", json={"source": hub.file_url("other.gguf"), "name": "api-model"}
    )
    assert taken.status_code == 409 and "the name is taken" in taken.json()["error"]["message"]
    assert agent.api("DELETE", "/v1/models/api-model").status_code == 200
