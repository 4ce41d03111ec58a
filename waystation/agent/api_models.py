"""Models over the socket: `GET /v1/models` (OpenAI's list), `POST /v1/models/pull` (Server-Sent
Events of its progress), `DELETE /v1/models/{name}`, and `GET /v1/models/loaded` for `models ps`.

A pull is resolved (the source parsed, the hub asked for the file's metadata) and its name held
before the answer begins, so a bad source or name, a file the hub does not have, a name another
pull holds (409) or a known size with no room on disk (507) is a JSON error with its status;
after that the stream says `progress` as bytes arrive, then `done` with the model, or `error`.
A caller that goes away stops the download; what arrived is kept, and the same pull resumes it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waystation import sse
from waystation.agent.http_io import json_body, optional_str, station_of
from waystation.errors import MalformedRequest, WaystationError
from waystation.station import AgentStation
from waystation.station.ops import models

if TYPE_CHECKING:
    from waystation.adapters.models.pull import Pull

# The command line's own HF_TOKEN and HF_ENDPOINT, for this pull only (the agent may run as a
# service that has neither): the token is never stored, logged or echoed.
TOKEN_HEADER = "Waystation-Hf-Token"
ENDPOINT_HEADER = "Waystation-Hf-Endpoint"
MAX_SOURCE = 2048


def add_model_routes(app: web.Application) -> None:
    # GET /v1/models is the model API's (api.py add_model_api): the listener serves it too.
    app.router.add_get("/v1/models/loaded", loaded_models)
    app.router.add_post("/v1/models/pull", pull_model)
    app.router.add_delete("/v1/models/{name}", delete_model)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(await models.list_models(station_of(request)))


async def loaded_models(request: web.Request) -> web.Response:
    return web.json_response(models.loaded(station_of(request)))


async def delete_model(request: web.Request) -> web.Response:
    return web.json_response(await models.remove(station_of(request), request.match_info["name"]))


async def pull_model(request: web.Request) -> web.StreamResponse:
    station = station_of(request)
    body = await json_body(request)
    source = body.get("source")
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE:
        raise MalformedRequest(f"source must be hf:OWNER/REPO/FILE or an http(s) URL (at most {MAX_SOURCE})")
    name = optional_str(body, "name", 128)
    sha256 = optional_str(body, "sha256", 64)
    token = request.headers.get(TOKEN_HEADER) or None
    endpoint = request.headers.get(ENDPOINT_HEADER) or None
    async with models.prepare_pull(station, source, name, sha256, token=token, endpoint=endpoint) as plan:
        return await _stream_pull(request, station, plan)


async def _stream_pull(request: web.Request, station: AgentStation, plan: Pull) -> web.StreamResponse:
    """The pull's progress as Server-Sent Events, then its model or its error."""
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(event: dict[str, Any]) -> None:
        frames.put_nowait(sse.frame(event, "progress"))

    running = asyncio.create_task(models.pull(station, plan, progress), name=f"pull-{plan.name}")
    running.add_done_callback(lambda _: frames.put_nowait(None))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        while (frame := await frames.get()) is not None:
            await response.write(frame)
    except BaseException:
        running.cancel()  # nobody is left to hear of it: stop, keeping what arrived for a resume
        await asyncio.wait({running})
        if not running.cancelled():
            running.exception()  # it ended meanwhile: retrieved, so asyncio does not report it
        raise
    try:
        model = await running
    except WaystationError as exc:
        await response.write(sse.frame(exc.to_json()["error"], "error"))
    else:
        await response.write(sse.frame(model, "done"))
    await response.write_eof()
    return response
