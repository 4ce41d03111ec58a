"""The house rules hold: ruff (lint and format), mypy --strict over the package and the tests
(pyproject.toml's [tool.mypy]), and the layers' import contracts ([tool.importlinter])."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean() -> None:
    result = run(sys.executable, "-m", "ruff", "check", "waystation", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_and_tests_are_ruff_formatted() -> None:
    result = run(sys.executable, "-m", "ruff", "format", "--check", "waystation", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = run(str(lint_imports), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
