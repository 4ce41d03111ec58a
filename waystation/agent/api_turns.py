"""Turns over the socket: `POST /v1/turns` (plain and SSE), `GET /v1/turns[/{id}]`, and the
streaming that OpenAI-compatible chat completions (api_openai.py) share.

A turn posted to /v1/turns is a resource: it runs in the agent's background, so a caller that
stops waiting (or goes away) leaves it running, and reads it back later. The answer's headers
name it before any of its body (`Location: /v1/turns/{id}`, `Waystation-Turn-Id`). A chat
completion belongs to its caller and stops when the caller goes.
Streaming answers are Server-Sent Events. A turn that fails after the stream began ends the
stream with an `error` event (the receipt is written either way); before that, it is a JSON error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from waystation import sse
from waystation.agent.http_io import client_left, json_body, query_int, station_of
from waystation.errors import WaystationError
from waystation.station.ops import turns
from waystation.station.turns.request import TURN_ID_HEADER, TurnResult, turn_request


def add_turn_routes(app: web.Application) -> None:
    app.router.add_post("/v1/turns", post_turn)
    app.router.add_get("/v1/turns", list_turns)
    app.router.add_get("/v1/turns/{id}", get_turn)


async def post_turn(request: web.Request) -> web.StreamResponse:
    station = station_of(request)
    body = await json_body(request)
    turn = turn_request(body)
    if not body.get("stream"):
        turn_id, running = await turns.start(station, turn)
        # Shielded: a caller that goes away stops waiting, not the turn.
        result = await asyncio.shield(running)
        return web.json_response(result.to_json(), headers=_names(turn_id))
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    stages = StageFrames(frames)
    turn_id, running = await turns.start(
        station, turn, lambda piece: frames.put_nowait(sse.frame({"text": piece}, "token")), stages
    )
    return await stream_turn(
        request,
        running,
        frames,
        done=lambda result: sse.frame(result.to_json(), "done"),
        failed=lambda exc: sse.frame(exc.to_json()["error"], "error"),
        headers=_names(turn_id),
        detached=True,
    )


def _names(turn_id: str) -> dict[str, str]:
    """The headers that name the turn an answer is about, before any of its body."""
    return {"Location": f"/v1/turns/{turn_id}", TURN_ID_HEADER: turn_id}


class StageFrames:
    """`stage` events while a turn waits for the model: `waiting` (with how many generations are
    ahead) and `loading`, then `generating` once it runs. A turn that found the model free and
    loaded says nothing: its first token is the news."""

    def __init__(self, frames: asyncio.Queue[bytes | None]) -> None:
        self._frames = frames
        self._waited = False

    def __call__(self, stage: str, ahead: int) -> None:
        if stage == "generating" and not self._waited:
            return
        self._waited = stage != "generating"
        self._frames.put_nowait(sse.frame({"stage": stage, "ahead": ahead}, "stage"))


async def list_turns(request: web.Request) -> web.Response:
    station = station_of(request)
    limit = query_int(request, "limit", 100)
    return web.json_response(await turns.list_turns(station, request.query.get("state") or None, limit))


async def get_turn(request: web.Request) -> web.Response:
    return web.json_response(await turns.get(station_of(request), request.match_info["id"]))


async def stream_turn(
    request: web.Request,
    turn: asyncio.Task[TurnResult],
    frames: asyncio.Queue[bytes | None],
    *,
    done: Callable[[TurnResult], bytes],
    failed: Callable[[WaystationError], bytes],
    first: bytes = b"",
    headers: dict[str, str] | None = None,
    detached: bool = False,
    head_waits: bool = False,
) -> web.StreamResponse:
    """Write each frame of a running turn (its tokens) as it comes; the model never waits on a
    slow reader. With `head_waits` the answer begins with the first frame (or the end), so a
    turn that fails before it is a plain JSON error."""
    turn.add_done_callback(lambda _: frames.put_nowait(None))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    )
    try:
        frame = await frames.get() if head_waits else b""
        if frame is None and (failure := turn.exception()) is not None:
            raise failure
        await response.prepare(request)
        if first:
            await response.write(first)
        if frame:
            await response.write(frame)
        while frame is not None and (frame := await frames.get()) is not None:
            await response.write(frame)
    except BaseException:
        # The client went away or the agent is stopping (the handler is cancelled). A detached
        # turn goes on (the agent's stop interrupts it); one that belongs to its caller stops.
        if not detached:
            await _stop(turn)
        raise
    try:
        result = await turn
    except WaystationError as exc:
        await response.write(failed(exc))
    else:
        await response.write(done(result))
    await response.write_eof()
    return response


CALLER_POLL_S = 0.25  # how soon the model stops for a caller of a whole answer that went away


async def whole_turn(request: web.Request, turn: asyncio.Task[TurnResult]) -> TurnResult:
    """The result of a turn that belongs to its caller, answered whole (a chat completion without
    `stream`). aiohttp runs a handler to its end after its client left, and this one writes
    nothing until then: so the client's connection is looked at while the turn runs, and a turn
    whose caller closed it stops, as a streamed one does, instead of generating for nobody."""
    try:
        while not turn.done():
            await asyncio.wait({turn}, timeout=CALLER_POLL_S)
            if not turn.done() and client_left(request):
                raise ConnectionResetError("the client closed the connection")
    except BaseException:
        await _stop(turn)
        raise
    return turn.result()


async def _stop(turn: asyncio.Task[TurnResult]) -> None:
    """Stop a turn at the model's next token; it still writes its ("interrupted") receipt."""
    turn.cancel()
    await asyncio.wait({turn})
    if not turn.cancelled():
        turn.exception()  # it ended on its own meanwhile; nobody is left to tell
