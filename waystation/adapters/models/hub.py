"""Where a Hugging Face file is and what it must be, asked of the hub through `huggingface_hub`.

Only the metadata comes from `huggingface_hub` (its HEAD on `/{repo}/resolve/{revision}/{file}`,
which honours HF_ENDPOINT and the hub's redirects): the download itself is ours (pull.py), since
`hf_hub_download` deletes what it got when a download stops, and a pull must resume. For a file
kept in LFS (every GGUF) the hub names the file's sha256 as its ETag (`X-Linked-Etag`), which the
download is checked against.

The token (HF_TOKEN, or `hf auth login`'s) goes to the hub only: a redirect to another origin (the
CDN holding the bytes, with a signed URL) gets no Authorization, as huggingface_hub does itself.
The agent's own token goes only to the agent's own hub (HF_ENDPOINT, else huggingface.co): an
endpoint a caller names (`Waystation-Hf-Endpoint`) gets the caller's token or none, since
huggingface_hub would otherwise send whatever token this machine has to any server it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from waystation.errors import MalformedRequest, PullFailed

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    url: str  # where the bytes are: the hub itself, or the CDN it redirects to
    sha256: str | None  # None for a small file the hub keeps in git (its ETag is a git hash)
    size: int | None
    commit: str
    headers: dict[str, str] = field(repr=False)  # may hold the token: never shown, never logged
    token: str | None = field(default=None, repr=False)  # the one used, for the log's redaction


def hub_file(
    repo_id: str, filename: str, *, token: str | None, endpoint: str | None, revision: str = "main"
) -> HubFile:
    """The file's metadata (blocking: call it on a thread). `token` None: the one huggingface_hub
    finds itself (HF_TOKEN, then the token file of `hf auth login`), but only for this machine's
    own hub; an `endpoint` naming another gets `token` or nothing."""
    import httpx2
    from huggingface_hub import constants, errors, get_hf_file_metadata, get_token, hf_hub_url
    from huggingface_hub.utils._validators import validate_repo_id

    shown = f"hf:{repo_id}/{filename}"
    try:
        validate_repo_id(repo_id)  # what the hub would refuse anyway, refused here with a 400
    except errors.HFValidationError as exc:
        raise MalformedRequest(
            f"{shown!r}: {repo_id!r} is not a Hugging Face repository id ({exc})"
        ) from None
    if token is None and own_hub(endpoint, constants.ENDPOINT):
        token = get_token()
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        # token=False, not None: None would make huggingface_hub send this machine's token itself.
        meta = get_hf_file_metadata(url, token=token or False, endpoint=endpoint, retry_on_errors=False)
    except errors.GatedRepoError:
        raise PullFailed(shown, _needs_token("is gated: accept its terms on the hub, then"), 401) from None
    except errors.RepositoryNotFoundError as exc:
        problem = _needs_token("was not found (a private repository looks the same: if it is one,")
        raise PullFailed(shown, problem + ")", _status(exc)) from None
    except (errors.RemoteEntryNotFoundError, errors.RevisionNotFoundError) as exc:
        problem = f"{repo_id} has no file {filename!r} at {revision}"
        raise PullFailed(shown, problem, _status(exc)) from None
    except errors.HfHubHTTPError as exc:
        raise PullFailed(shown, f"the hub answered HTTP {_status(exc)}", _status(exc)) from None
    except errors.OfflineModeIsEnabled:
        raise PullFailed(shown, "HF_HUB_OFFLINE is set: unset it to download") from None
    except httpx2.TransportError as exc:
        raise PullFailed(shown, f"cannot reach {_origin(url)} ({type(exc).__name__})") from None
    except errors.HFValidationError as exc:
        raise MalformedRequest(f"{shown!r}: {exc}") from None
    except errors.FileMetadataError:
        raise PullFailed(shown, f"{_origin(url)} did not answer as a Hugging Face hub") from None
    if meta.commit_hash is None or meta.etag is None:
        raise PullFailed(shown, f"{_origin(url)} did not answer as a Hugging Face hub (no commit or ETag)")
    location = meta.location or url
    same_origin = _origin(location) == _origin(url)
    headers = {"authorization": f"Bearer {token}"} if token and same_origin else {}
    return HubFile(
        url=location,
        sha256=meta.etag if SHA256.fullmatch(meta.etag) else None,
        size=meta.size,
        commit=meta.commit_hash,
        headers=headers,
        token=token,
    )


def own_hub(endpoint: str | None, configured: str) -> bool:
    """Whether `endpoint` (None: the configured one) is this machine's own hub, `configured`
    (HF_ENDPOINT, else huggingface.co), to which its token may go: the same origin."""
    return endpoint is None or _origin(endpoint).lower() == _origin(configured).lower()


def _needs_token(what: str) -> str:
    return f"the repository {what} set HF_TOKEN to a token with access"


def _status(exc: object) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
