"""HTTP/1.1 + JSON over the status socket: the contract's /v1 routes, SSE events and /metrics.

Each handler parses the request, calls one station operation and renders its answer. Every
failure leaves as `{"error": {"code", "message"}}` with a 4xx/5xx status; a handler never lets a
foreign exception escape as an HTML page or a dropped connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from waystation.agent.api_models import add_model_routes, list_models
from waystation.agent.api_openai import add_openai_routes
from waystation.agent.api_receipts import add_receipt_routes
from waystation.agent.api_turns import add_turn_routes
from waystation.agent.http_io import (
    MAX_BODY_BYTES,
    STATION,
    client_left,
    error_response,
    json_body,
    query_int,
    station_of,
)
from waystation.agent.mcp_http import add_mcp_routes
from waystation.agent.openapi import openapi_document
from waystation.api_token import TokenCheck
from waystation.errors import InputError, MalformedRequest, WaystationError
from waystation.station import AgentStation
from waystation.station.ops import status, tasks

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        announced = request.content_length or 0
        if announced > MAX_BODY_BYTES:  # refused before a byte of it is read
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=announced)
        return await handler(request)
    except WaystationError as exc:
        if not isinstance(exc, InputError):
            log.warning("request failed", path=request.path, code=exc.code, error=exc.message)
        return error_response(exc.http_status, exc.code, exc.message, exc.details())
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason or code)
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and client_left(request):
            # aiohttp's ClientConnectionResetError from a write: the client of a streaming answer
            # (events, a streamed turn, a pull's progress) closed it, which is how such streams
            # end; or a chat completion's caller left before its whole answer (whole_turn). The
            # handlers stopped their work on the way out; this answer reaches nobody.
            log.debug("the client closed the connection mid-answer", path=request.path)
            return error_response(499, "client_closed", "the client closed the connection")
        log.exception("unexpected error in request", path=request.path)
        return error_response(500, "internal_error", "unexpected error; see the agent's log")


def create_app(station: AgentStation, token: TokenCheck | None = None) -> web.Application:
    """The socket's app; with `token`, the listener's (`[agent] listen`): the model API alone, each
    request with the bearer token, under the same body limit, timeouts and error bodies."""
    middlewares: list[Middleware] = (
        [errors_as_json] if token is None else [bearer_token(token), errors_as_json]
    )
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app[STATION] = station
    add_model_api(app)
    if token is not None:
        return app
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/connectivity", get_connectivity)
    app.router.add_put("/v1/connectivity", put_connectivity)
    app.router.add_get("/v1/routes", get_routes)
    app.router.add_post("/v1/tasks", create_task)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{id}", get_task)
    app.router.add_post("/v1/tasks/{id}/retry", retry_task)
    app.router.add_post("/v1/tasks/{id}/cancel", cancel_task)
    app.router.add_post("/v1/flush", flush)
    add_receipt_routes(app)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)
    add_model_routes(app)
    return app


def add_model_api(app: web.Application) -> None:
    """What other tools use, on the socket and the listener alike: models, chat completions,
    responses, turns, and `/mcp` (Waystation as an MCP server)."""
    app.router.add_get("/v1/models", list_models)
    add_openai_routes(app)
    add_turn_routes(app)
    add_mcp_routes(app)


def bearer_token(token: TokenCheck) -> Middleware:
    """401 for a request without the listener's token, before anything of it is read or routed
    (so a control path is 401 without it, 404 with it)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token.allows(request.headers.get("Authorization")):
            return await handler(request)
        response = error_response(
            401,
            "unauthorized",
            "send the token as Authorization: Bearer <token>; `waystation token` prints it",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="waystation"'
        return response

    return check


# --- handlers: parse -> operation -> JSON -------------------------------------------------------


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(await status.status(station_of(request)))


async def get_connectivity(request: web.Request) -> web.Response:
    return web.json_response(status.connectivity(station_of(request)))


async def put_connectivity(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(status.set_connectivity(station_of(request), body.get("mode")))


async def get_routes(request: web.Request) -> web.Response:
    return web.json_response(await status.routes(station_of(request)))


async def create_task(request: web.Request) -> web.Response:
    task, created = await tasks.add_request(station_of(request), await json_body(request))
    return web.json_response(task, status=201 if created else 200)


async def list_tasks(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100)
    return web.json_response(await tasks.list_tasks(station_of(request), request.query.get("state"), limit))


async def get_task(request: web.Request) -> web.Response:
    return web.json_response(await tasks.get(station_of(request), request.match_info["id"]))


async def retry_task(request: web.Request) -> web.Response:
    return web.json_response(await tasks.retry(station_of(request), request.match_info["id"]))


async def cancel_task(request: web.Request) -> web.Response:
    return web.json_response(await tasks.cancel(station_of(request), request.match_info["id"]))


async def flush(request: web.Request) -> web.Response:
    return web.json_response(await tasks.flush(station_of(request)), status=202)


async def events(request: web.Request) -> web.StreamResponse:
    last_id: int | None = None
    header = request.headers.get("Last-Event-ID")
    if header:
        try:
            last_id = int(header)
        except ValueError:
            raise MalformedRequest("Last-Event-ID must be an event id (an integer)") from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b": waystation events\n\n")
    async for event in station_of(request).announcer.events.subscribe(last_id):
        await response.write(event.to_sse())
    return response


def create_metrics_app(station: AgentStation) -> web.Application:
    """`[agent] metrics_listen`: GET /metrics over TCP for Prometheus, and nothing else; the
    control API stays on the socket, whose peers are checked."""
    app = web.Application(middlewares=[errors_as_json])
    app[STATION] = station
    app.router.add_get("/metrics", metrics)
    return app


async def metrics(request: web.Request) -> web.Response:
    text = await status.metrics(station_of(request))
    # The exposition format's version goes in the content type, as Prometheus negotiates on it.
    content_type = "text/plain; version=0.0.4; charset=utf-8"
    return web.Response(body=text.encode(), headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
