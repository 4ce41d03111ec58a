"""A pull's limits (issue 20, items 5, 10 and 16): the disk it may fill, the name it holds while
it runs, the token it may send, the repository ids it takes.

In process: the models API's handlers on a real aiohttp server on loopback, a real file server
(tests/fakehub.py) streaming bodies with no length, and, where this runs as root, a real small
file system (a tmpfs mounted for the test) for the models to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support.fakehub import FakeHub, HubFile, fake_gguf

from waystation.adapters.models import pull as pulling
from waystation.adapters.models import room
from waystation.adapters.models.hub import hub_file, own_hub
from waystation.adapters.models.store import ModelStore
from waystation.agent.api import errors_as_json
from waystation.agent.api_models import ENDPOINT_HEADER, add_model_routes, list_models
from waystation.agent.http_io import STATION
from waystation.config import ModelSettings, Settings
from waystation.errors import MalformedRequest, PullFailed, PullNoSpace
from waystation.sse import SseParser

MIB = 1 << 20


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        yield hub


@contextlib.contextmanager
def small_disk(size_mib: int) -> Iterator[Path]:
    """A file system of `size_mib` MiB of its own (a tmpfs), or skip where mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("a small file system of its own needs root (mount -t tmpfs)")
    folder = Path(tempfile.mkdtemp(prefix="ws-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)], check=False
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


def station(models: Path, keep_free_mb: int = 0) -> Any:
    """What the models operations use of a station: its models and its settings."""
    return SimpleNamespace(
        models=ModelStore(models), settings=Settings(model=ModelSettings(keep_free_mb=keep_free_mb))
    )


@contextlib.asynccontextmanager
async def models_api(models: Path, keep_free_mb: int = 0) -> Any:
    app = web.Application(middlewares=[errors_as_json])
    app[STATION] = station(models, keep_free_mb)
    add_model_routes(app)
    app.router.add_get("/v1/models", list_models)  # the model API's list, beside the model routes
    async with (
        TestServer(app, host="127.0.0.1") as server,
        httpx.AsyncClient(base_url=str(server.make_url("/")), timeout=30) as client,
    ):
        yield client


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- the disk (item 10) ----------------------------------------------------------------------------


def test_the_reserve_is_the_larger_of_256_mib_and_1_percent_at_most_4_gib() -> None:
    assert room.reserve(10 * 10**9) == 256 * MIB  # 1 % would be 100 MB
    assert room.reserve(100 * 10**9) == 10**9
    assert room.reserve(10**13) == 4 << 30  # 1 % would be 100 GB
    assert room.reserve(10**13, keep_free_mb=50) == 50 * 10**6
    assert room.Room(Path("/"), free=300, reserve=100).allows(200)
    assert not room.Room(Path("/"), free=300, reserve=100).allows(201)


def test_a_body_with_no_length_stops_above_the_reserve_and_leaves_nothing(hub: FakeHub) -> None:
    hub.unsized["endless.gguf"] = 200 * MIB
    with small_disk(64) as disk:
        models = disk / "models"
        plan = pulling.plan(
            hub.file_url("endless.gguf").replace("/files/", "/unsized/"),
            "big",
            None,
            token=None,
            endpoint=None,
        )
        with pytest.raises(PullNoSpace) as stopped:
            asyncio.run(pulling.download(plan, ModelStore(models), keep_free_mb=16))
        assert "kept free for the database" in stopped.value.message
        assert "what arrived was deleted" in stopped.value.message
        assert stopped.value.http_status == 507
        assert files_under(models) == []  # nothing kept "for a resume" that would hold the disk full
        assert room.measure(disk).free > 60 * MIB


def test_a_full_disk_deletes_what_arrived(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file system whose statvfs promises more than it has (a quota, a network file system):
    # the write itself fails with ENOSPC, and what arrived is deleted all the same.
    hub.unsized["full.gguf"] = 40 * MIB
    with small_disk(8) as disk:
        models = disk / "models"
        monkeypatch.setattr(room, "measure", lambda folder, keep=0: room.Room(folder, 10**12, 0))
        plan = pulling.plan(
            hub.file_url("full.gguf").replace("/files/", "/unsized/"), "full", None, token=None, endpoint=None
        )
        with pytest.raises(PullNoSpace) as stopped:
            asyncio.run(pulling.download(plan, ModelStore(models)))
        assert "is full; what arrived was deleted" in stopped.value.message
        assert files_under(models) == []


def test_a_known_size_with_no_room_is_refused_before_the_stream(hub: FakeHub, tmp_path: Path) -> None:
    content = fake_gguf(3 * MIB, seed=7)
    hub.files["acme/roomy/roomy.gguf"] = HubFile(content)
    free = room.measure(tmp_path).free
    keep_free_mb = (free - MIB) // 10**6  # 1 MiB short of the file: no room for it

    async def scenario() -> httpx.Response:
        async with models_api(tmp_path / "models", keep_free_mb) as client:
            headers = {ENDPOINT_HEADER: hub.endpoint}
            return await client.post(
                "/v1/models/pull", json={"source": "hf:acme/roomy/roomy.gguf"}, headers=headers
            )

    answer = asyncio.run(scenario())
    assert answer.status_code == 507, answer.text
    assert answer.json()["error"]["code"] == "pull_no_space"
    assert not [s for s in hub.requests("/blobs/") if s.path.endswith(hashlib.sha256(content).hexdigest())]


def test_doctor_names_a_stopped_download_and_its_bytes(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from waystation.cli.commands.doctor import check_downloads
    from waystation.config import Paths

    monkeypatch.setenv("WAYSTATION_HOME", str(tmp_path))
    paths = Paths.resolve()
    assert check_downloads(paths).level == "ok"
    hub.plain["stopped.gguf"] = fake_gguf(3 * MIB, seed=9)
    hub.drop_after["/files/stopped.gguf"] = 2 * MIB
    plan = pulling.plan(hub.file_url("stopped.gguf"), None, None, token=None, endpoint=None)
    with pytest.raises(PullFailed, match="the same pull resumes it"):
        asyncio.run(pulling.download(plan, ModelStore(paths.models), keep_free_mb=1))
    check = check_downloads(paths)
    assert check.level == "warn" and check.message.startswith("1 unfinished (stopped 2.1 MB):"), check


# --- one pull of a name at a time (item 10) ---------------------------------------------------------


async def sse_pull(
    client: httpx.AsyncClient, body: dict[str, Any], first: asyncio.Event
) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    parser = SseParser()
    async with client.stream("POST", "/v1/models/pull", json=body) as answer:
        assert answer.status_code == 200, await answer.aread()
        async for line in answer.aiter_lines():
            events.extend((found.event, found.json()) for found in parser.feed(line))
            first.set()
    return events


def test_a_second_pull_of_a_name_under_way_is_a_409(hub: FakeHub, tmp_path: Path) -> None:
    hub.unsized["one.gguf"] = 3 * MIB
    hub.unsized["two.gguf"] = 2 * MIB
    one = hub.file_url("one.gguf").replace("/files/", "/unsized/")
    two = hub.file_url("two.gguf").replace("/files/", "/unsized/")

    async def scenario() -> tuple[list[httpx.Response], list[tuple[str, Any]], dict[str, Any]]:
        async with models_api(tmp_path / "models", keep_free_mb=1) as client:
            hub.flowing.clear()
            first = asyncio.Event()
            running = asyncio.create_task(sse_pull(client, {"source": one, "name": "shared"}, first))
            await asyncio.wait_for(first.wait(), 10)
            listed = (await client.get("/v1/models")).json()
            refused = [
                await client.post("/v1/models/pull", json={"source": two, "name": "shared"}),
                await client.post("/v1/models/pull", json={"source": one, "name": "shared"}),
            ]
            hub.flowing.set()
            return refused, await running, listed

    try:
        refused, events, listed = asyncio.run(scenario())
    finally:
        hub.flowing.set()
    assert [r.status_code for r in refused] == [409, 409], [r.text for r in refused]
    assert all("already under way" in r.json()["error"]["message"] for r in refused)
    assert events[-1][0] == "done" and events[-1][1]["id"] == "shared"
    assert (tmp_path / "models" / "shared.gguf").stat().st_size == 3 * MIB  # the first one's file
    partial = listed["waystation"]["partial"]  # a download under way is listed, with its bytes
    assert [(p["name"], p["source"]) for p in partial] == [("shared", one)] and partial[0]["size"] > 0
    assert files_under(tmp_path / "models") == [
        tmp_path / "models/shared.gguf",
        tmp_path / "models/shared.json",
    ]


# --- the token and the repository id (items 5 and 16) -----------------------------------------------


def test_the_machines_token_never_goes_to_an_endpoint_a_caller_names(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    hub.files["acme/open/open.gguf"] = HubFile(fake_gguf(1000, seed=8))
    token_file = tmp_path / "token"
    token_file.write_text("hf_OnlyInTheLoginFile0123456789")  # as `hf auth login` leaves it
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    assert constants.ENDPOINT == "https://huggingface.co"  # the agent's own: not the caller's

    found = hub_file("acme/open", "open.gguf", token=None, endpoint=hub.endpoint)
    assert found.token is None and found.headers == {}
    assert [s.auth for s in hub.requests("/acme/open/")] == [None]

    hub_file("acme/open", "open.gguf", token="hf_TheCallersOwn", endpoint=hub.endpoint)
    assert hub.requests("/acme/open/")[-1].auth == "Bearer hf_TheCallersOwn"

    assert own_hub(None, "https://huggingface.co")  # the agent's own hub gets its token
    assert own_hub("HTTPS://HuggingFace.co/", "https://huggingface.co")
    assert not own_hub("https://huggingface.co.evil.example", "https://huggingface.co")


@pytest.mark.parametrize(
    "source", ["hf:bad--owner/c/x.gguf", "hf:badowner/.hidden/x.gguf", "hf:badowner/sp ace/x.gguf"]
)
def test_an_invalid_repository_id_is_a_400(source: str, hub: FakeHub) -> None:
    with pytest.raises(MalformedRequest, match="is not a Hugging Face repository id"):
        pulling.plan(source, None, None, token=None, endpoint=hub.endpoint)
    assert not hub.requests("/bad")
