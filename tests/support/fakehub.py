"""A loopback Hugging Face hub, as `huggingface_hub` talks to one with HF_ENDPOINT set, and a
plain file server, for pull tests. Real HTTP (aiohttp) on a thread of the test's process.

The hub answers `HEAD|GET /{owner}/{repo}/resolve/{revision}/{file}` as huggingface.co does for
a file kept in LFS: a 302 to a CDN on another origin (here: another port), with `X-Repo-Commit`,
`X-Linked-Etag` (the file's sha256, quoted) and `X-Linked-Size`. A gated repository answers 401
with `X-Error-Code: GatedRepo` unless the request carries the token; an unknown file, 404 with
`X-Error-Code: EntryNotFound`. The CDN (`/blobs/{sha256}`) and the file server (`/files/{name}`)
honour `Range` (206, `Content-Range`), and give an `ETag`. Faults: `drop_after[path] = n` cuts the
next GET of that path after n bytes of its body (Content-Length promised the whole), once.
`unsized[name] = n` serves `/unsized/{name}`: n bytes of a GGUF-looking file with no length
(chunked), 1 MiB at a time; while `flowing` is clear, each waits after each MiB.
Every request is recorded (method, path, Authorization, Range).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from dataclasses import dataclass, field

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    port: int
    auth: str | None
    range: str | None


@dataclass
class HubFile:
    content: bytes
    sha256: str = ""  # what the hub vouches for; "" = the content's own (a corrupt file: another)

    def __post_init__(self) -> None:
        self.sha256 = self.sha256 or hashlib.sha256(self.content).hexdigest()


@dataclass
class FakeHub:
    files: dict[str, HubFile] = field(default_factory=dict)  # "owner/repo/file" -> file
    plain: dict[str, bytes] = field(default_factory=dict)  # /files/{name}
    gated: dict[str, str] = field(default_factory=dict)  # "owner/repo" -> the token it needs
    drop_after: dict[str, int] = field(default_factory=dict)
    unsized: dict[str, int] = field(default_factory=dict)
    flowing: threading.Event = field(default_factory=threading.Event)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flowing.set()
        self.hub_port, self.cdn_port = _free_port(), _free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the fake hub did not start"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def file_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.cdn_port}/files/{name}"

    def requests(self, prefix: str = "/") -> list[Seen]:
        return [s for s in list(self.seen) if s.path.startswith(prefix)]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the server -----------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{owner}/{repo}/resolve/{revision}/{file:.+}", self._resolve)
        app.router.add_get("/blobs/{sha}", self._blob)
        app.router.add_get("/files/{name}", self._plain)
        app.router.add_get("/unsized/{name}", self._unsized)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        for port in (self.hub_port, self.cdn_port):
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", port).start())
        self._ready.set()
        self._loop.run_forever()

    def _record(self, request: web.Request) -> None:
        port = request.url.port or 0
        auth, ranged = request.headers.get("Authorization"), request.headers.get("Range")
        self.seen.append(Seen(request.method, request.path, port, auth, ranged))

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        info = request.match_info
        repo = f"{info['owner']}/{info['repo']}"
        needed = self.gated.get(repo)
        if needed is not None and request.headers.get("Authorization") != f"Bearer {needed}":
            return web.Response(status=401, headers={"X-Error-Code": "GatedRepo", "X-Repo-Commit": COMMIT})
        found = self.files.get(f"{repo}/{info['file']}")
        if found is None:
            return web.Response(
                status=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
            )
        location = f"http://127.0.0.1:{self.cdn_port}/blobs/{found.sha256}"
        headers = {
            "Location": location,
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{found.sha256}"',
            "X-Linked-Etag": f'"{found.sha256}"',
            "X-Linked-Size": str(len(found.content)),
        }
        return web.Response(status=302, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        sha = request.match_info["sha"]
        content = next((f.content for f in self.files.values() if f.sha256 == sha), None)
        if content is None:
            return web.Response(status=404)
        return await self._ranged(request, content, f'"{sha}"')

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        content = self.plain.get(request.match_info["name"])
        if content is None:
            return web.Response(status=404)
        return await self._ranged(request, content, f'"{hashlib.md5(content).hexdigest()}"')

    async def _unsized(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        size = self.unsized.get(request.match_info["name"])
        if size is None:
            return web.Response(status=404)
        response = web.StreamResponse()  # no Content-Length: chunked, as a generated body comes
        await response.prepare(request)
        block = b"GGUF" + bytes((1 << 20) - 4)
        sent = 0
        while sent < size:
            await response.write(block[: size - sent])
            sent += len(block[: size - sent])
            await asyncio.to_thread(self.flowing.wait)
        await response.write_eof()
        return response

    async def _ranged(self, request: web.Request, content: bytes, etag: str) -> web.StreamResponse:
        start, status = 0, 200
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        asked = request.headers.get("Range", "")
        if asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[6:-1])
            if start >= len(content):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(content)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        body = content[start:]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        cut = self.drop_after.pop(request.path, None)
        if cut is not None:
            await response.write(body[:cut])
            await asyncio.sleep(0.05)  # let the bytes leave before the connection goes
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fake_gguf(size: int, seed: int = 0) -> bytes:
    """Bytes that pass as a GGUF file by their magic (a pull checks no more)."""
    import random

    return b"GGUF" + random.Random(seed).randbytes(size - 4)
