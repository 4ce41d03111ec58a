"""The caller's request is wrong (4xx): the InputError family. Each names the part of the
request at fault, so the answer says what to send instead; nothing here is retried."""

from __future__ import annotations

from waystation.errors.base import WaystationError


class InputError(WaystationError):
    code = "bad_request"
    http_status = 400


class MalformedRequest(InputError):
    code = "malformed_request"


class RequestTimeout(InputError):
    code = "request_timeout"
    http_status = 408


class BodyTooLarge(InputError):
    code = "body_too_large"
    http_status = 413


class UnknownTool(InputError):
    code = "unknown_tool"
    http_status = 422

    def __init__(self, tool: str, known: list[str]) -> None:
        super().__init__(f"unknown tool {tool!r}; known tools: {', '.join(sorted(known))}")
        self.tool = tool
        self.known = known


class InvalidArguments(InputError):
    code = "invalid_arguments"
    http_status = 422

    def __init__(self, tool: str, problem: str) -> None:
        super().__init__(f"{tool}: {problem}")
        self.tool = tool
        self.problem = problem


class WorkRefused(InputError):
    """Work from the fleet's hub that this host does not take: unsigned or signed by no trusted
    key, naming a secret or reaching a host `[fleet]` does not allow. Terminated, never retried."""

    code = "work_refused"
    http_status = 403


class NotFound(InputError):
    code = "not_found"
    http_status = 404

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")
        self.kind = kind
        self.ident = ident


class IdempotencyConflict(InputError):
    code = "idempotency_conflict"
    http_status = 409

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(f"idempotency key {key!r} already names task {task_id} with other arguments")
        self.key = key
        self.task_id = task_id


class InvalidTransition(InputError):
    code = "invalid_transition"
    http_status = 409

    def __init__(self, task_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} task {task_id}: it is {state}")
        self.task_id = task_id
        self.state = state
        self.action = action


class EmptyPrompt(InputError):
    code = "empty_prompt"

    def __init__(self) -> None:
        super().__init__("the prompt is empty; say what the turn should do")


class NoUrlToCall(InputError):
    """A call was demanded (required, or a named tool) but the conversation names no URL."""

    code = "no_url_to_call"

    def __init__(self, tool_choice: str) -> None:
        super().__init__(
            f"tool_choice {tool_choice} needs a URL to call, and the prompt names none; "
            "put the http(s) URL in the prompt, or list its host in [tools] allow_hosts"
        )
        self.tool_choice = tool_choice


class UnsupportedParameter(InputError):
    """A request parameter that would change the answer and that we cannot honour (`n` > 1, a
    schema the grammar cannot express): refused by name rather than silently ignored."""

    code = "unsupported_parameter"

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


class BadCheckpoint(InputError):
    """A checkpoint, proof or verifier key that is malformed or not signed by the key given (422)."""

    code = "bad_checkpoint"
    http_status = 422


class PromptTooLong(InputError):
    code = "prompt_too_long"

    def __init__(self, tokens: int, context: int, at_least: bool = False) -> None:
        size = f"at least {tokens}" if at_least else f"{tokens}"  # at least: counted from its characters
        super().__init__(f"the prompt is {size} tokens; the model's context holds {context}")
        self.tokens = tokens
        self.context = context
        self.at_least = at_least


class TooManyItems(InputError):
    """A list in a request longer than we take, as OpenAI refuses one (its code and limits:
    2,048 messages, 128 tools): refused before any of it is read further."""

    code = "array_above_max_length"

    def __init__(self, parameter: str, count: int, limit: int) -> None:
        super().__init__(f"{parameter}: array too long, {count} items; at most {limit}")
        self.parameter = parameter
        self.count = count
        self.limit = limit
