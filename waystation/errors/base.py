"""The root of the tree: WaystationError, whose code, HTTP status and exit code the socket API
and the CLI both read, and which crosses the socket as `to_json()` and is rebuilt by `from_json()`."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from waystation.errors.wire import constructor_fields, error_body, json_value


class WaystationError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """The constructor's arguments by name, as JSON values: `type(self)(**details)` builds
        this error again (a `message` argument is the error's message, sent beside the details)."""
        return {
            name: json_value(getattr(self, name))
            for name in constructor_fields(type(self))
            if name != "message" and hasattr(self, name)
        }

    def to_json(self) -> dict[str, object]:
        return error_body(self.code, self.message, self.details())

    @classmethod
    def from_json(cls, message: str, details: object = None) -> Self:
        """The error `to_json()` described, built through the constructor from `details` so its
        fields are set. Details that are absent (an older agent) or do not fit the constructor give
        an instance carrying the message alone. The message is always the one that was sent."""
        fields = constructor_fields(cls)
        if isinstance(details, dict) or set(fields) <= {"message"}:
            given = details if isinstance(details, dict) else {}
            arguments = {name: given[name] for name in fields if name in given}
            if "message" in fields:
                arguments["message"] = message
            try:
                error = cls(**arguments)
            except (TypeError, ValueError):
                pass
            else:
                if error.message != message:  # another version words it otherwise: keep its words
                    error.message = message
                    error.args = (message,)
                return error
        error = cls.__new__(cls)
        WaystationError.__init__(error, message)
        return error
