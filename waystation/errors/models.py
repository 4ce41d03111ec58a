"""A model cannot be used, found, named or fetched: the model files and their downloads."""

from __future__ import annotations

from waystation.errors.base import WaystationError


class ModelError(WaystationError):
    code = "model_error"
    http_status = 422

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"model {path}: {problem}")
        self.path = path
        self.problem = problem


class UnknownModel(WaystationError):
    """A turn's `model`, or a name given to `models rm`, names no model: say where names come from."""

    code = "model_not_found"  # OpenAI's code for the same answer
    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no model named {name!r}; `waystation models ls` lists them, `waystation models pull` gets one"
        )
        self.name = name


class ModelConflict(WaystationError):
    code = "model_conflict"
    http_status = 409

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"model {name!r}: {problem}")
        self.name = name
        self.problem = problem


class PullFailed(WaystationError):
    """A download that did not complete: what arrived is kept, and the same pull resumes it."""

    code = "pull_failed"
    http_status = 502

    def __init__(self, source: str, problem: str, status: int | None = None) -> None:
        super().__init__(f"pull {source}: {problem}")
        self.source = source
        self.problem = problem
        self.status = status  # the HTTP status the server answered, if that was the problem


class PullNoSpace(PullFailed):
    """A download that would take the disk below the space kept free (or found it full): what
    arrived is deleted, so the database keeps room to work."""

    code = "pull_no_space"
    http_status = 507


class ChecksumMismatch(PullFailed):
    """The downloaded bytes are not the file the source vouches for: discarded, never installed."""

    code = "checksum_mismatch"
    http_status = 422

    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(source, f"sha256 {actual} does not match the expected {expected}; discarded")
        self.expected = expected
        self.actual = actual
