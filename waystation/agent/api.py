"""HTTP/1.1 + JSON over the status socket: the contract's /v1 routes, SSE events and /metrics.

Every failure leaves as `{"error": {"code", "message"}}` with a 4xx/5xx status; a handler never
lets a foreign exception escape as an HTML page or a dropped connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from waystation import receipts, timeutil
from waystation.agent.api_turns import add_turn_routes
from waystation.agent.http_common import (
    MAX_BODY_BYTES,
    SERVICES,
    error_response,
    json_body,
    optional_str,
    query_int,
    services_of,
)
from waystation.agent.metrics import render_metrics
from waystation.agent.openapi import openapi_document
from waystation.agent.services import Services
from waystation.errors import InputError, MalformedRequest, WaystationError
from waystation.queue.policy import TaskState
from waystation.queue.tasks import NewTask

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
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
    except Exception:
        log.exception("unexpected error in request", path=request.path)
        return error_response(500, "internal_error", "unexpected error; see the agent's log")


def create_app(services: Services) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_as_json])
    app[SERVICES] = services
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/connectivity", get_connectivity)
    app.router.add_put("/v1/connectivity", put_connectivity)
    app.router.add_get("/v1/routes", routes)
    app.router.add_post("/v1/tasks", create_task)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{id}", get_task)
    app.router.add_post("/v1/tasks/{id}/retry", retry_task)
    app.router.add_post("/v1/tasks/{id}/cancel", cancel_task)
    app.router.add_post("/v1/flush", flush)
    app.router.add_get("/v1/receipts", list_receipts)
    app.router.add_get("/v1/receipts/verify", verify_receipts)
    app.router.add_get("/v1/receipts/{id}", get_receipt)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi)
    add_turn_routes(app)
    return app


# --- handlers -----------------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    s = services_of(request)
    return web.json_response(
        {
            "version": s.version,
            "uptime_s": round(time.monotonic() - s.started, 3),
            "connectivity": s.monitor.snapshot(),
            "queue": await s.store.counts(),
            "model": s.router.local.model_status(),
            "routes": await s.router.statuses(),
        }
    )


async def get_connectivity(request: web.Request) -> web.Response:
    return web.json_response(services_of(request).monitor.snapshot())


async def put_connectivity(request: web.Request) -> web.Response:
    body = await json_body(request)
    mode = body.get("mode")
    if mode not in ("auto", "online", "offline"):
        raise MalformedRequest("mode must be one of auto, online, offline")
    s = services_of(request)
    s.monitor.set_mode(mode)
    return web.json_response(s.monitor.snapshot())


async def routes(request: web.Request) -> web.Response:
    return web.json_response(await services_of(request).router.statuses())


async def create_task(request: web.Request) -> web.Response:
    s = services_of(request)
    body = await json_body(request)
    tool_name = body.get("tool")
    if not isinstance(tool_name, str):
        raise MalformedRequest("tool must be a string naming a tool")
    tool = s.tools.get(tool_name)
    args = tool.validate(body.get("args", {}))
    expires_at = body.get("expires_at")
    if expires_at is not None:
        try:
            expires_at = timeutil.parse_iso(expires_at) if isinstance(expires_at, str) else None
        except ValueError:
            expires_at = None
        if expires_at is None:
            raise MalformedRequest("expires_at must be an ISO 8601 timestamp")
    task, created = await s.store.enqueue(
        NewTask.for_tool(
            tool, args, idempotency_key=optional_str(body, "idempotency_key"), expires_at=expires_at
        )
    )
    if created:
        s.task_changed(task)
        s.flusher.wake()
    return web.json_response(task.to_json(), status=201 if created else 200)


async def list_tasks(request: web.Request) -> web.Response:
    state_text = request.query.get("state")
    state = None
    if state_text:
        try:
            state = TaskState(state_text)
        except ValueError:
            raise MalformedRequest(f"state must be one of {', '.join(TaskState)}") from None
    tasks = await services_of(request).store.list(state, query_int(request, "limit", 100))
    return web.json_response([t.to_json() for t in tasks])


async def get_task(request: web.Request) -> web.Response:
    task = await services_of(request).store.get(request.match_info["id"])
    return web.json_response(task.to_json())


async def retry_task(request: web.Request) -> web.Response:
    s = services_of(request)
    task = await s.store.retry(request.match_info["id"])
    s.task_changed(task)
    s.flusher.wake()
    return web.json_response(task.to_json())


async def cancel_task(request: web.Request) -> web.Response:
    s = services_of(request)
    task, receipt = await s.store.cancel(request.match_info["id"])
    s.task_changed(task, receipt)
    return web.json_response(task.to_json())


async def flush(request: web.Request) -> web.Response:
    s = services_of(request)
    due = await s.store.make_due()
    s.flusher.flush_everything()  # an explicit flush sends what a metered connection holds back
    state = s.monitor.state
    note = "delivering now" if state == "online" else f"connectivity is {state}: will deliver when online"
    body = {"pending": due, "connectivity": state, "metered": s.monitor.metered, "message": note}
    return web.json_response(body, status=202)


async def list_receipts(request: web.Request) -> web.Response:
    after = request.query.get("after") or None
    found = await receipts.list_receipts(services_of(request).db, after, query_int(request, "limit", 100))
    return web.json_response(found)


async def get_receipt(request: web.Request) -> web.Response:
    return web.json_response(await receipts.get_receipt(services_of(request).db, request.match_info["id"]))


async def verify_receipts(request: web.Request) -> web.Response:
    result = await receipts.verify_database(services_of(request).db)
    return web.json_response(result.to_json())


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
    async for event in services_of(request).events.subscribe(last_id):
        await response.write(event.to_sse())
    return response


async def metrics(request: web.Request) -> web.Response:
    s = services_of(request)
    text = render_metrics(await s.store.counts(), s.monitor.state, s.metrics)
    # The exposition format's version goes in the content type, as Prometheus negotiates on it.
    content_type = "text/plain; version=0.0.4; charset=utf-8"
    return web.Response(body=text.encode(), headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
