"""Helper servers for the benchmarks, each run in its own process so it has its own event loop.

    python bench/_servers.py baseline --uds PATH   # a trivial aiohttp app on a Unix socket
    python bench/_servers.py receiver [--port N]   # a delivery target and probe target on loopback

Each prints its address on one line once it accepts connections, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from aiohttp import web

# Roughly the size and shape of the agent's answers, so the baseline serializes similar bytes.
STATUS = {
    "version": "0.0.0",
    "uptime_s": 1.0,
    "connectivity": {
        "state": "offline",
        "mode": "offline",
        "since": "2025-01-01T00:00:00Z",
        "last_probe": None,
    },
    "queue": {"pending": 0, "running": 0, "done": 0, "dead": 0, "cancelled": 0, "expired": 0},
    "model": {"backend": "auto", "path": "", "loaded": False},
    "routes": [],
}
TASK = {
    "id": "t_0123456789abcdef",
    "tool": "http_request",
    "args": {"method": "POST", "url": "http://127.0.0.1:9/hook", "headers": {}, "json": {"seq": 1}},
    "idempotency_key": "waystation-t_0123456789abcdef",
    "state": "pending",
    "attempts": 0,
    "next_attempt_at": "2025-01-01T00:00:00Z",
    "last_error": None,
    "result": None,
    "created_at": "2025-01-01T00:00:00Z",
    "updated_at": "2025-01-01T00:00:00Z",
    "expires_at": "2025-01-08T00:00:00Z",
    "turn_id": None,
}


def baseline_app() -> web.Application:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(STATUS)

    async def create_task(request: web.Request) -> web.Response:
        json.loads(await request.read())  # parse the body, as any real handler must
        return web.json_response(TASK, status=201)

    app = web.Application()
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/tasks", create_task)
    return app


class Receiver:
    """Counts deliveries (wall-clock times, comparable across processes) and answers probes."""

    def __init__(self) -> None:
        self.count = 0
        self.keys: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None

    async def hook(self, request: web.Request) -> web.Response:
        now = time.time()
        await request.read()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        self.keys.add(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"ok": True})

    async def probe(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def page(self, request: web.Request) -> web.Response:
        title = request.match_info["title"].replace("-", " ")
        body = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
        return web.Response(text=body, content_type="text/html")

    async def stats(self, request: web.Request) -> web.Response:
        stats: dict[str, Any] = {
            "count": self.count,
            "distinct_keys": len(self.keys),
            "first": self.first,
            "last": self.last,
        }
        return web.json_response(stats)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/generate_204", self.probe)
        app.router.add_get("/stats", self.stats)
        app.router.add_route("*", "/hook", self.hook)
        app.router.add_get("/page/{title}", self.page)  # a page a turn can be asked about
        return app


async def serve(kind: str, uds: str | None, port: int = 0) -> None:
    app = baseline_app() if kind == "baseline" else Receiver().app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if kind == "baseline":
        assert uds is not None
        site: web.BaseSite = web.UnixSite(runner, uds)
        await site.start()
        address = uds
    else:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        port = server.sockets[0].getsockname()[1]
        address = f"http://127.0.0.1:{port}"
    print(address, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["baseline", "receiver"])
    parser.add_argument("--uds")
    parser.add_argument("--port", type=int, default=0, help="the receiver's port (default: any free one)")
    args = parser.parse_args()
    if args.kind == "baseline" and not args.uds:
        parser.error("baseline needs --uds PATH")
    asyncio.run(serve(args.kind, args.uds, args.port))


if __name__ == "__main__":
    main()
