"""`waystation run`: settings, logging, then the agent until SIGTERM/SIGINT; an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import structlog

from waystation import logs
from waystation.config import Paths
from waystation.config_load import load_settings
from waystation.errors import WaystationError
from waystation.secrets import known_secrets, warn_if_config_exposed


def run_agent() -> int:
    """Run the agent in the foreground; a failure is one `error: ...` line and its exit code."""
    try:
        paths = Paths.resolve()
        settings = load_settings(paths)
        logs.configure(secrets=known_secrets(settings))
        _raise_open_file_limit()
        warn_if_config_exposed(paths.config_file, settings)
        if settings.model.gpu_layers != 0:
            _load_llama_cpp_first()
        from waystation.agent.daemon import serve

        asyncio.run(serve(paths, settings))
    except WaystationError as exc:
        sys.stderr.write(f"error: {' '.join(exc.message.split())}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: the log keeps the traceback, the exit code says it failed
        structlog.get_logger("waystation.agent").exception("agent crashed")
        return 1
    return 0


OPEN_FILES_IF_UNLIMITED = 1 << 20


def _raise_open_file_limit() -> None:
    """The soft open-file limit up to the hard one, as systemd's LimitNOFILE does for a unit: each
    socket client is a file, and 1,024 (the usual soft limit) is easy to exhaust."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_IF_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _load_llama_cpp_first() -> None:
    """With GPU layers, llama.cpp's libraries load before anything else's. A CUDA build (H100,
    CUDA 13, gcc 13) crashed in `llama_model_load_from_file` when numpy or aiohttp had been
    imported first, and loaded fine when llama_cpp came first (as when the system's libstdc++ was
    preloaded): the C++ runtime a process loads first is the one it keeps. Without GPU layers
    the import waits for the first turn, so the agent starts without paying for it."""
    with contextlib.suppress(ImportError):
        import llama_cpp  # noqa: F401
