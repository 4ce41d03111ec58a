"""Real processes for end-to-end tests: the agent itself, and a loopback HTTP receiver.

`Agent` starts `waystation run` (see AGENT_COMMAND, the one place that says how) in its own
WAYSTATION_HOME, waits until `GET /v1/status` answers on the socket, and can stop it with any
signal. `Receiver` is an aiohttp server in a child process that records every request (path and
`Idempotency-Key`) and answers what the path asks for; the test reads the records over HTTP.

Both run as separate processes on purpose: a `kill -9` must hit a real agent, and the receiver
must outlive the agent's restarts without sharing the test's interpreter, threads or warnings.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

# How to start the agent in the foreground: the console command, as systemd would run it.
# If `waystation run` is ever unusable, the equivalent in-process launch is:
#   [sys.executable, "-c", "import asyncio; from waystation.config import Paths; "
#    "from waystation.config_load import load_settings; "
#    "from waystation.agent.daemon import serve; from waystation import logs; logs.configure(); "
#    "p = Paths.resolve(); asyncio.run(serve(p, load_settings(p)))"]
AGENT_COMMAND: list[str] = [sys.executable, "-m", "waystation", "run"]

READY_TIMEOUT_S = 20.0


def wait_for(
    check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy; return it, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def run_in_threads(work: Callable[[int], None], count: int) -> None:
    """work(0) .. work(count - 1), each on its own thread, all at once; return when all are done."""
    threads = [threading.Thread(target=work, args=(w,)) for w in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def make_home() -> Path:
    """A fresh WAYSTATION_HOME, mode 0700, directly under the system temp dir.

    Short (a Unix socket path must fit in 108 bytes) and reachable by other users once its mode
    is loosened (pytest's own tmp dirs sit inside a 0700 directory), which the peer-uid test needs.
    """
    home = Path(tempfile.mkdtemp(prefix="ws-e2e-"))
    home.chmod(0o700)
    return home


def remove_home(home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def started_agent(env: Mapping[str, str]) -> Iterator[Agent]:
    """A real agent in a fresh home for the length of the block; then stopped and cleaned up."""
    home = make_home()
    agent = Agent(home, dict(env))
    try:
        agent.start()
        yield agent
    finally:
        agent.close()
        remove_home(home)


def worker_cores() -> int | None:
    """The cores a model gets on this pytest-xdist worker, beside the other workers' tests (its
    share, as a person running two model processes on one machine would set `[model] threads`);
    None when no other worker runs."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None


def agent_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYSTATION_")}
    for name in ("NOTIFY_SOCKET", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["WAYSTATION_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    if (cores := worker_cores()) is not None:  # beside another worker's tests
        env["WAYSTATION_MODEL__THREADS"] = str(cores)
    env.update(extra or {})
    return env


def cli_process(
    home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`waystation ARGS` as its own process, in `home`: for a command that must be a process (a
    turn run by a real model in the command's own process, a signal, an import-time setting);
    otherwise support/inproc.py's run_cli is the same command at a fraction of the cost."""
    return subprocess.run(
        [sys.executable, "-m", "waystation", *args],
        env=agent_env(home, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _connect_waiting(raw: socket.socket, sock: Path, timeout: float) -> None:
    """Connect as a blocking client does: while the socket's backlog is full (EAGAIN, which a
    socket with a timeout gets at once) wait for room, up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw.connect(str(sock))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.001)  # the agent accepts in bursts: room comes and goes quickly


def status_code(sock: Path, timeout: float = 2.0) -> int | None:
    """`GET /v1/status` over a raw socket: the answer's status, or None if nothing answers.

    Raw on purpose: httpcore leaks its socket (a ResourceWarning, an error under
    `filterwarnings=error`) when connecting to a Unix socket fails, as it does before start-up.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(timeout)
            _connect_waiting(raw, sock, timeout)
            raw.sendall(b"GET /v1/status HTTP/1.1\r\nHost: waystation\r\nConnection: close\r\n\r\n")
            head = b""
            while b"\r\n" not in head:
                chunk = raw.recv(4096)
                if not chunk:
                    return None
                head += chunk
    except OSError:
        return None
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def raw_request(
    sock: Path, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any] | None:
    """One request on a fresh connection: (status, JSON body), or None if no full answer came.

    For load that runs while the agent is killed: a None is a request that was never acknowledged.
    """
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: waystation\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(timeout)
            _connect_waiting(raw, sock, timeout)
            raw.sendall(head + payload)
            while chunk := raw.recv(65536):
                answer += chunk
    except OSError:
        return None
    header, sep, content = answer.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        return None
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", header)
    if length and len(content) < int(length.group(1)):
        return None  # cut off: not an acknowledgement
    try:
        decoded = json.loads(content) if content else None
    except ValueError:
        decoded = content
    return int(status_line[1]), decoded


def uds_client(sock: Path, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://waystation", timeout=timeout
    )


class AgentApi:
    """What a test asks of an agent on `home` through its socket, whichever way it runs: a process
    here (`Agent`), or in the test's own process (support/inproc.py's `InProcessAgent`)."""

    home: Path

    @property
    def socket(self) -> Path:
        return self.home / "waystation.sock"

    @property
    def database(self) -> Path:
        return self.home / "waystation.db"

    @property
    def log_path(self) -> Path:
        return self.home / "agent-output.log"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return uds_client(self.socket, timeout)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return "(no output)"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.request(method, path, **kwargs)

    def set_mode(self, mode: str) -> dict[str, Any]:
        response = self.api("PUT", "/v1/connectivity", json={"mode": mode})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def tasks(self, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        response = self.api("GET", "/v1/tasks", params=params)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.api("GET", "/v1/status").json()["queue"]
        return counts


class Agent(AgentApi):
    """One agent home; `start()` may be called again after the process has gone (a restart)."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.extra_env: dict[str, str] = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._runs = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a process (without waiting for it to be ready); output goes to the log file."""
        self._runs += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== run {self._runs} =====\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                AGENT_COMMAND,
                env=agent_env(self.home, {**self.extra_env, **(env or {})}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the test's terminal must not reach it
            )
        finally:
            log.close()

    def start(self, env: Mapping[str, str] | None = None, timeout: float = READY_TIMEOUT_S) -> Agent:
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        self.proc = self.launch(env)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.proc.returncode} before it was ready:\n{self.output()}"
                )
            if status_code(self.socket) == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"agent not ready after {timeout:g}s:\n{self.output()}")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """`kill -9`, and reap it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; wait for the exit and return its code (SIGKILL if it overstays, then fail)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"agent did not stop within {timeout:g}s of SIGTERM:\n{self.output()}"
            ) from None

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit by itself; its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout:g}s:\n{self.output()}") from None

    def close(self) -> None:
        """Make sure no process is left behind (tests call this in teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- the receiver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    path: str
    method: str
    key: str | None
    at: float  # the receiver's time.time() when the request arrived
    auth: str | None = None  # the Authorization header, if any
    body: str = ""
    content_type: str | None = None  # the request's Content-Type header, if any


class Receiver:
    """A loopback HTTP destination in a child process. Paths choose the answer:

    /generate_204            204 (a connectivity probe target)
    /ok/<anything>           200
    /status/<code>           that status
    /flaky/<n>/<anything>    503 with Retry-After: 1 (or ?retry_after=S) for the first n requests
                             with a given Idempotency-Key, then 200
    /slow/<ms>/<anything>    waits <ms> ms, then 200
    /page/<Title-Words>      200, an HTML page titled "Title Words"
    /redirect/<code>/<rest>  <code> with Location: /<rest>; ?to=URL sends it to URL instead
    Every request is recorded; `hits()` reads the records (the /_hits path is not recorded).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """`host`: the address to listen on (another one than loopback: reachable from a netns);
        `port`: a given one (a destination that comes back where tasks wait for it), else any."""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import agentproc; agentproc.receiver_main({host!r}, {port})",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=agent_env(Path(tempfile.gettempdir())),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            self.proc.stdout.close()
            raise AssertionError("the receiver did not start")
        self.port = int(line)
        self.base = f"http://{host}:{self.port}"
        self._http = httpx.Client(base_url=self.base, trust_env=False, timeout=10)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def hits(self, prefix: str = "/") -> list[Hit]:
        records = self._http.get("/_hits").json()
        return [Hit(**r) for r in records if r["path"].startswith(prefix)]

    def keys(self, prefix: str = "/") -> list[str | None]:
        return [h.key for h in self.hits(prefix)]

    def close(self) -> None:
        self._http.close()
        terminate(self.proc)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def receiver_main(host: str = "127.0.0.1", port: int = 0) -> None:
    """The receiver process: serve until SIGTERM. Prints its port as the first line."""
    import asyncio
    import collections

    from aiohttp import web

    hits: list[dict[str, Any]] = []
    seen: collections.Counter[tuple[str, str | None]] = collections.Counter()

    async def record(request: web.Request) -> web.StreamResponse:
        path = request.path
        key = request.headers.get("Idempotency-Key")
        body = (await request.read()).decode(errors="replace")
        auth = request.headers.get("Authorization")
        hits.append(
            {
                "path": path,
                "method": request.method,
                "key": key,
                "at": time.time(),
                "auth": auth,
                "body": body,
                "content_type": request.headers.get("Content-Type"),
            }
        )
        parts = path.strip("/").split("/")
        if parts[0] == "generate_204":
            return web.Response(status=204)
        if parts[0] == "status" and len(parts) > 1:
            return web.Response(status=int(parts[1]), text=f"status {parts[1]}")
        if parts[0] == "flaky" and len(parts) > 1:
            seen[(path, key)] += 1
            if seen[(path, key)] <= int(parts[1]):
                retry_after = request.query.get("retry_after", "1")
                return web.Response(status=503, text="busy", headers={"Retry-After": retry_after})
        if parts[0] == "redirect" and len(parts) > 1:
            target = request.query.get("to") or "/" + "/".join(parts[2:])
            return web.Response(status=int(parts[1]), headers={"Location": target})
        if parts[0] == "page" and len(parts) > 1:
            title = parts[1].replace("-", " ")
            page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1><p>All about {title}.</p>"
            return web.Response(text=page + "</body></html>", content_type="text/html")
        if parts[0] == "slow" and len(parts) > 1:
            await asyncio.sleep(int(parts[1]) / 1000)
        return web.json_response({"ok": True, "path": path})

    async def read_hits(request: web.Request) -> web.Response:
        return web.json_response(hits)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/_hits", read_hits)
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket()
        sock.bind((host, port))
        site = web.SockSite(runner, sock)
        await site.start()
        sys.stdout.write(f"{sock.getsockname()[1]}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def free_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_nobody_uses() -> int:
    """A loopback port where nothing listens, below the usual ephemeral range (32768 and up), so
    no outgoing connection takes it as its own port before a destination comes back on it."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free loopback port between 20000 and 32000")


# --- server-sent events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SSE:
    id: int | None
    event: str
    data: Any


def sse_events(lines: Iterator[str]) -> Iterator[SSE]:
    """Parse `text/event-stream` lines into events (comments skipped; data as JSON)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                ident = fields.get("id")
                yield SSE(
                    int(ident) if ident else None, fields.get("event", "message"), json.loads("\n".join(data))
                )
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


# --- network namespaces (root): a host whose link the test can cut -------------------------------

netns_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs Linux, root and iproute2 to create network namespaces",
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)
