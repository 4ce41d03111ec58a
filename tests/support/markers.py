"""Markers by what a test starts, found from the code it runs rather than written by hand.

A test earns `process` when the code it reaches starts an operating-system process (a real agent,
the receiver, nats-server, the CLI as a subprocess, a child for a flood), `model` when it reaches a
real model backend, `netns` when it reaches the network-namespace helpers, and `soak` when it asks
for a soak length. "Reaches" is static: the names in the test function, in every fixture it uses
and, transitively, in every function and class of the tests' own code those names resolve to
(library code is not followed, so a waystation function that happens to start a process does not
count; the in-process agent in support/inproc.py starts none).

So `pytest -m "not process"` is the quick tier, and a new test file needs no edits to be sorted.
"""

from __future__ import annotations

import asyncio
import builtins
import multiprocessing
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent.parent

STARTS_PROCESS: tuple[object, ...] = (
    subprocess.Popen,
    subprocess.run,
    subprocess.call,
    subprocess.check_call,
    subprocess.check_output,
    asyncio.create_subprocess_exec,
    asyncio.create_subprocess_shell,
    multiprocessing.Process,
    multiprocessing.get_context,
    os.fork,
    os.system,
    os.posix_spawn,
)

# Fixtures (by name) whose use alone says what a test starts; defined in conftest.py.
FIXTURE_MARKS = {"agent_namespace": {"netns", "process"}, "soak_length": {"soak"}}

# Objects (by module and name) that say it when reached; looked up lazily so that importing this
# module loads no model code.
NAMED_MARKS = {
    ("waystation.adapters.models.llamacpp", "LlamaCppBackend"): "model",
    ("waystation.adapters.models.mlx", "MlxBackend"): "model",
    ("waystation.adapters.models.embedded", "default_model_path"): "model",
    ("support.agentproc", "ip"): "netns",
    ("support.agentproc", "netns_only"): "netns",
}


def _named(obj: object) -> str | None:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    return NAMED_MARKS.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None


def _ours(obj: object) -> bool:
    """Defined in the tests' own code (followed), not in a library (not followed)."""
    if isinstance(obj, types.FunctionType):
        path: str | None = obj.__code__.co_filename
    elif isinstance(obj, type):
        path = getattr(sys.modules.get(obj.__module__), "__file__", None)
    else:
        return False
    return path is not None and Path(path).resolve().is_relative_to(TESTS_DIR)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _unwrap(obj: object) -> object:
    for attr in ("__wrapped__", "__func__", "func", "fget"):
        inner = getattr(obj, attr, None)
        if callable(inner) and inner is not obj:
            return _unwrap(inner)
    return obj


class Reach:
    """What a function (and what it calls in the tests' own code) starts; memoised per function."""

    def __init__(self) -> None:
        # The object is kept with its answer so that its id is not reused by another one.
        self._memo: dict[int, tuple[object, frozenset[str]]] = {}

    def marks(self, obj: object) -> frozenset[str]:
        return frozenset(self._walk(_unwrap(obj), set()))

    def _walk(self, obj: object, seen: set[int]) -> set[str]:
        key = id(obj)
        if key in self._memo:
            return set(self._memo[key][1])
        if key in seen:  # a cycle: what it starts is counted where the walk came in
            return set()
        seen.add(key)
        found: set[str] = set()
        mark = _named(obj)
        if mark:
            found.add(mark)
        if any(obj is starter for starter in STARTS_PROCESS):
            found.add("process")
        elif isinstance(obj, type) and _ours(obj):
            for member in vars(obj).values():
                found |= self._walk(_unwrap(member), seen)
        elif isinstance(obj, types.FunctionType) and _ours(obj):
            for referenced in self._referenced(obj):
                found |= self._walk(_unwrap(referenced), seen)
        self._memo[key] = (obj, frozenset(found))
        return found

    @staticmethod
    def _referenced(func: types.FunctionType) -> Iterable[object]:
        """Globals the function names, and attributes of the modules among them it names."""
        names: set[str] = set()
        for code in _codes(func.__code__):
            names.update(code.co_names)
        space: dict[str, Any] = func.__globals__
        objects = [space[n] for n in names if n in space]
        objects += [getattr(builtins, n) for n in names if n not in space and hasattr(builtins, n)]
        modules = [o for o in objects if isinstance(o, types.ModuleType)]
        for module in modules:
            objects += [getattr(module, n) for n in names if hasattr(module, n)]
        for cell in func.__closure__ or ():
            try:
                objects.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        return objects


def add_marks(items: list[pytest.Item], reach: Reach, known: Callable[[str], bool]) -> None:
    """Mark each collected test with what it starts (only markers registered in pyproject)."""
    for item in items:
        marks: set[str] = set()
        function = getattr(item, "function", None)
        if function is not None:
            marks |= reach.marks(function)
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(item, "fixturenames", ()):
            marks |= FIXTURE_MARKS.get(name, set())
            for fixturedef in info.name2fixturedefs.get(name, ()) if info else ():
                marks |= reach.marks(fixturedef.func)
        for mark in sorted(marks):
            if known(mark) and item.get_closest_marker(mark) is None:
                item.add_marker(mark)
