"""Pulling a model: a Hugging Face file (`hf:OWNER/REPO/FILE`) or a plain http(s) URL,
downloaded into `models/.partial/`, checked, and only then installed under its name.

A download that stops (the connection drops, Ctrl-C, the agent stops) keeps what arrived; the
same pull asks for the rest with `Range`. Where the file's sha256 is known in advance (the hub's
ETag, or `--sha256`), the partial file is named by it, so any URL serving those bytes continues
it; otherwise it is named by the URL and resumed only while the server's validator (`If-Range`)
says the file has not changed. A file whose sha256 is not the expected one, or that is not a GGUF
file, is deleted, never installed. A download never takes the disk below the reserve room.py keeps
for the database: one stopped by it (or by a full disk) is deleted, not kept for a resume.

While a pull of a name runs, another pull of that name is refused (409, here or in another process:
a lock file `.partial/NAME.lock`), as is a second pull of the same file under another name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx

from waystation import durable, timeutil
from waystation.adapters.models import room
from waystation.adapters.models.hub import SHA256, hub_file
from waystation.adapters.models.store import (
    ModelStore,
    StoredModel,
    check_name,
    default_name,
    partial_note,
    try_lock,
)
from waystation.errors import ChecksumMismatch, MalformedRequest, ModelConflict, PullFailed, PullNoSpace
from waystation.redact import shown_url

ProgressSink = Callable[[dict[str, Any]], None]
GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.1


@dataclass(frozen=True)
class Pull:
    """A resolved pull: where the bytes are, what they must be, and the name they go under."""

    source: str  # as shown: a URL without its credentials
    name: str
    url: str = field(repr=False)
    headers: dict[str, str] = field(repr=False)  # may hold a token: never shown, never logged
    sha256: str | None  # what the file must hash to, when the source (or the caller) says
    size: int | None
    record: dict[str, Any] = field(default_factory=dict)  # more to remember (the hub's commit)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # for the log's redaction

    @property
    def key(self) -> str:
        """The partial file's name: content-addressed when the sha256 is known."""
        return self.sha256 or hashlib.sha256(self.url.encode()).hexdigest()[:40]


def plan(
    source: str, name: str | None, sha256: str | None, *, token: str | None, endpoint: str | None
) -> Pull:
    """Resolve `source` (blocking: the hub is asked for its metadata; call it on a thread)."""
    expected = _check_sha256(sha256)
    if source.startswith("hf:"):
        parts = source[3:].split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise MalformedRequest(f"{source!r}: a Hugging Face source is hf:OWNER/REPO/FILE")
        repo_id, filename = f"{parts[0]}/{parts[1]}", parts[2]
        found = hub_file(repo_id, filename, token=token, endpoint=endpoint)
        if expected and found.sha256 and expected != found.sha256:
            raise ChecksumMismatch(source, expected, found.sha256)
        return Pull(
            source=source,
            name=_name(name, filename, source),
            url=found.url,
            headers=found.headers,
            sha256=expected or found.sha256,
            size=found.size,
            record={"commit": found.commit},
            secrets=tuple(s for s in [found.token] if s),
        )
    url = urlsplit(source)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise MalformedRequest(f"{source!r}: a source is hf:OWNER/REPO/FILE or an http(s) URL")
    filename = unquote(url.path.rstrip("/").rsplit("/", 1)[-1])
    return Pull(shown_url(source), _name(name, filename, source), source, {}, expected, None)


@contextlib.contextmanager
def claimed(pull: Pull, store: ModelStore, keep_free_mb: int = 0) -> Iterator[None]:
    """Hold `pull`'s name while it runs: ModelConflict (409) when another pull of that name is
    under way, here or in another process, or when the name belongs to another model; PullNoSpace
    (507) when the file's known size does not fit above the reserve. Checked before any stream."""
    lock = store.pull_lock(pull.name)
    fd = try_lock(lock)
    if fd is None:
        raise ModelConflict(pull.name, "a pull of this name is already under way; wait for it to finish")
    try:
        check_target(pull, store)
        if pull.size is not None:
            have = _size_of(store.partial(pull.key))
            _check_room(pull, room.measure(lock.parent, keep_free_mb), pull.size - have, have, upfront=True)
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the lock goes: see try_lock
        os.close(fd)
        store.tidy()


async def download(
    pull: Pull, store: ModelStore, on_progress: ProgressSink | None = None, *, keep_free_mb: int = 0
) -> StoredModel:
    """Download, check and install `pull`; the model as installed. `keep_free_mb`: the reserve
    (room.py; 0: its default)."""
    progress = on_progress or (lambda _event: None)
    existing = check_target(pull, store)
    if existing is not None and pull.sha256 and existing.sha256 == pull.sha256:
        store.forget_download(pull.key)  # a power cut can leave it beside the installed model
        progress({"status": "up to date", "completed": existing.size, "total": existing.size})
        return existing
    partial = store.partial(pull.key)
    durable.make_dirs(partial.parent)
    try:
        with _locked(partial, pull) as f:
            digest, size = await _fetch(pull, f, partial, progress, keep_free_mb)
    finally:
        store.tidy()  # a refused download leaves not even its directory
    progress({"status": "verifying", "completed": size, "total": size})
    if pull.sha256 and digest != pull.sha256:
        _discard(partial, store)
        raise ChecksumMismatch(pull.source, pull.sha256, digest)
    record = {
        "source": pull.source,
        "sha256": digest,
        "size": size,
        "pulled_at": timeutil.iso(timeutil.now()),
        "verified": pull.sha256 is not None,
        **pull.record,
    }
    partial_note(partial).unlink(missing_ok=True)
    try:
        model = store.install(pull.name, partial, record)
    except OSError as exc:
        raise PullFailed(pull.source, f"cannot install it in {store.root}: {exc.strerror}") from None
    progress({"status": "success", "completed": size, "total": size})
    return model


def check_target(pull: Pull, store: ModelStore) -> StoredModel | None:
    """The model `pull` would replace (the same source again: an update), or ModelConflict when
    its name belongs to another model."""
    existing = store.find(pull.name)
    if existing is not None and existing.source != pull.source:
        raise ModelConflict(
            pull.name,
            f"the name is taken (by {existing.source or 'a model put there by hand'}); "
            f"`waystation models rm {pull.name}` first, or pull with another --name",
        )
    return existing


async def _fetch(
    pull: Pull, f: IO[bytes], partial: Path, progress: ProgressSink, keep_free_mb: int
) -> tuple[str, int]:
    """Bring the partial file up to the whole file: (its sha256, its size)."""
    have = f.seek(0, os.SEEK_END)
    validator = None if pull.sha256 else _read_validator(partial)
    if have and not pull.sha256 and validator is None:
        have = _restart(f)  # nothing says the server's file is still the one begun
    hasher = await asyncio.to_thread(_hash_prefix, f, have)
    headers = {**pull.headers, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    total = pull.size
    writing = False
    try:
        _note(partial, pull, validator)  # what `models ls` and `doctor` say of it meanwhile
        async with (
            httpx.AsyncClient(follow_redirects=True, timeout=httpx.Timeout(30.0, connect=10.0)) as client,
            client.stream("GET", pull.url, headers=headers) as response,
        ):
            if response.status_code == 416 and have:
                # It was all there: the last pull stopped (a kill, a power cut) before installing
                # it. Known by the size the source gave, else by the server's "bytes */SIZE"
                # (a URL pulled with --sha256 has no size given ahead: it failed once here).
                if have in (pull.size, _range_total(response)):
                    return hasher.hexdigest(), have
                _restart(f)
                raise PullFailed(
                    pull.source, "the server would not resume the download; the same pull starts over"
                )
            if response.status_code == 206 and have and _range_start(response) == have:
                total = _range_total(response) or total
            elif response.status_code == 200:
                have, hasher = _restart(f), hashlib.sha256()
                total = total or _int(response.headers.get("Content-Length"))
                if not pull.sha256:
                    _note(partial, pull, _validator(response.headers))
            else:
                status = response.status_code
                raise PullFailed(pull.source, f"the server answered HTTP {status}", status)
            _check_room(
                pull, room.measure(partial.parent, keep_free_mb), (total or 0) - have, have, upfront=True
            )
            started, writing = have, True
            shown_at = 0.0
            async for chunk in response.aiter_bytes(CHUNK):
                if have == started == 0 and len(chunk) >= 4 and chunk[:4] != GGUF_MAGIC:
                    raise _not_gguf(pull, partial)
                _check_room(pull, room.measure(partial.parent, keep_free_mb), len(chunk), have)
                f.write(chunk)
                hasher.update(chunk)
                have += len(chunk)
                if time.monotonic() - shown_at >= PROGRESS_EVERY_S:
                    shown_at = time.monotonic()
                    progress({"status": "downloading", "completed": have, "total": total})
            f.flush()
            os.fsync(f.fileno())
    except httpx.HTTPError as exc:
        got = f"{have} of {total} bytes" if total else f"{have} bytes"
        problem = f"the download stopped at {got} ({type(exc).__name__}); the same pull resumes it"
        raise PullFailed(pull.source, problem) from None
    except PullNoSpace:
        if writing:  # kept, it would hold the disk at the reserve until a resume
            _delete(partial)
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _delete(partial)
            raise PullNoSpace(pull.source, f"{partial.parent} is full; what arrived was deleted") from None
        raise PullFailed(pull.source, f"cannot write {partial}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):  # what arrived, kept for a resume (if it is still there)
            f.flush()
            os.fsync(f.fileno())
    progress({"status": "downloading", "completed": have, "total": total or have})
    if total is not None and have != total:
        raise PullFailed(
            pull.source, f"the download stopped at {have} of {total} bytes; the same pull resumes it"
        )
    if have < 4 or _head(f) != GGUF_MAGIC:
        raise _not_gguf(pull, partial)
    return hasher.hexdigest(), have


@contextlib.contextmanager
def _locked(partial: Path, pull: Pull) -> Iterator[IO[bytes]]:
    """The partial file, opened and held: a second pull of the same file (here or in another
    process: the command line and the agent) is told one is under way, never interleaved."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelConflict(pull.name, f"a pull of {pull.source} is already under way") from None
        yield f


def _name(name: str | None, filename: str, source: str) -> str:
    if name:
        return check_name(name)
    derived = default_name(filename)
    if derived is None:
        raise MalformedRequest(f'cannot make a model name from {source!r}; give one (--name / "name")')
    return derived


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.lower()
    if not SHA256.fullmatch(lowered):
        raise MalformedRequest("sha256 must be 64 hexadecimal digits")
    return lowered


def _restart(f: IO[bytes]) -> int:
    f.seek(0)
    f.truncate()
    return 0


def _hash_prefix(f: IO[bytes], length: int) -> Any:
    """The sha256 of what a resumed download already has (read once, on a thread)."""
    hasher = hashlib.sha256()
    f.seek(0)
    left = length
    while left > 0 and (block := f.read(min(CHUNK, left))):
        hasher.update(block)
        left -= len(block)
    f.seek(length)
    return hasher


def _head(f: IO[bytes]) -> bytes:
    f.seek(0)
    return f.read(4)


def _not_gguf(pull: Pull, partial: Path) -> PullFailed:
    _delete(partial)
    return PullFailed(pull.source, "not a GGUF model file; discarded")


def _discard(partial: Path, store: ModelStore) -> None:
    _delete(partial)
    store.tidy()


def _delete(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    partial_note(partial).unlink(missing_ok=True)


def _check_room(pull: Pull, found: room.Room, more: int, have: int, *, upfront: bool = False) -> None:
    """PullNoSpace unless `more` bytes fit on the disk above the reserve. `upfront`: the rest of a
    file of known size, before any of it is written (what an earlier pull left stays, listed)."""
    if found.allows(more):
        return
    kept = f"{room.shown(found.reserve)} kept free for the database ([model] keep_free_mb)"
    where, free = found.folder, room.shown(found.free)
    if upfront:
        problem = (
            f"needs {room.shown(more)} more and {where} has {free} free, {kept.replace('kept', 'of it kept')}"
        )
    elif have:
        problem = f"stopped at {room.shown(have)}: {where} is down to the {kept}; what arrived was deleted"
    else:
        problem = f"{where} has {free} free, under the {kept}"
    raise PullNoSpace(pull.source, problem)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _range_start(response: httpx.Response) -> int | None:
    unit, _, spec = response.headers.get("Content-Range", "").partition(" ")
    return _int(spec.partition("-")[0]) if unit == "bytes" else None


def _range_total(response: httpx.Response) -> int | None:
    return _int(response.headers.get("Content-Range", "").rpartition("/")[2])


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


# A URL's partial file is resumed only if the server still has the same file: its strong ETag, or
# else its Last-Modified, goes back in If-Range (a changed file then comes whole, with a 200). It
# is kept beside the partial file with the pull's name and source, which `models ls` shows.


def _validator(headers: httpx.Headers) -> str | None:
    etag: str | None = headers.get("ETag")
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")


def _note(partial: Path, pull: Pull, validator: str | None) -> None:
    note = {"name": pull.name, "source": pull.source, "validator": validator}
    durable.write_atomic(partial_note(partial), json.dumps(note), 0o644)


def _read_validator(partial: Path) -> str | None:
    try:
        value = json.loads(partial_note(partial).read_text()).get("validator")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
