"""The command line, and the console entry point (`waystation`, `python -m waystation`).

`waystation run` starts the agent without loading the command-line framework (typer, click and
their help rendering cost the long-running process ~8 MB it would never use); every other command
goes to the typer app in cli/app.py. Nothing here may import typer at module level.
"""

from __future__ import annotations

import sys
from typing import NoReturn


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    if args == ["run"]:
        from waystation.agent.runner import run_agent

        sys.exit(run_agent())
    from waystation.cli.app import run_cli

    sys.exit(run_cli(args))
