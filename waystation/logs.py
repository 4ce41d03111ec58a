"""Logging through structlog: readable on a terminal, JSON lines elsewhere (journald, launchd)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO, cast

import structlog

from waystation.secrets import Redactor

# The redactor of the logging configured last. Module state, as structlog's configuration is: one
# per process, and a secret a task resolves later must reach the very processor that runs.
_redactor = Redactor(())


class _CurrentStderr:
    """sys.stderr as it is at each write, not as it was when logging was set up: a logger cached
    then (cache_logger_on_first_use) keeps writing where stderr goes now, never to a stream that
    was swapped out and closed since (a test's captured stderr, a command run in-process)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: int = logging.INFO, secrets: Iterable[str] = ()) -> None:
    """Set up logging; `secrets` are blanked from every line, whole or in part."""
    global _redactor
    _redactor = Redactor(secrets)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redactor,
    ]
    if sys.stderr.isatty():
        # Plain tracebacks, already formatted and redacted above: rich's would show local variables.
        processors.append(structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback))
    else:
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )


def redact_too(secret: str) -> None:
    """Blank `secret` from every later line as well: a value a task's secret reference resolved to."""
    _redactor.add(secret)
