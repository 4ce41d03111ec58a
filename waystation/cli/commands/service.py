"""`waystation service install|uninstall|status`: the agent as a systemd or launchd service."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from waystation.cli.common import fail, typer_app

if TYPE_CHECKING:
    from waystation.service import Service

service_app = typer_app(no_args_is_help=True)

SystemFlag = Annotated[
    bool,
    typer.Option(
        "--system",
        help="The system-wide unit (/etc/systemd/system, user `waystation`, socket in /run/waystation).",
    ),
]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _service(system: bool) -> Service:
    from waystation.service import Service

    return Service.for_host(system=system)


@service_app.command()
def install(
    print_only: Annotated[
        bool, typer.Option("--print", help="Only print the unit (or plist) that would be written.")
    ] = False,
    system: SystemFlag = False,
) -> None:
    """Write the systemd user unit (or launchd agent) with this installation's paths, enable and
    start it. Prints each step; exits 1 when systemctl/launchctl is missing or fails (the file is
    written all the same). Example, to review it first:

    ```
    waystation service install --print
    ```
    """
    from waystation.errors import WaystationError

    try:
        service = _service(system)
        if print_only:
            sys.stdout.write(service.render())
            return
        service.install(_say)
    except WaystationError as exc:
        fail(exc.message)
        raise typer.Exit(1) from None


@service_app.command()
def uninstall(system: SystemFlag = False) -> None:
    """Stop and disable the service and remove its unit (or plist)."""
    from waystation.errors import WaystationError

    try:
        _service(system).uninstall(_say)
    except WaystationError as exc:
        fail(exc.message)
        raise typer.Exit(1) from None


@service_app.command()
def status(system: SystemFlag = False) -> None:
    """Whether the service is installed, enabled and running, with the agent's own status line.

    Exit 0 running, 3 installed but not running, 1 not installed.
    """
    from waystation.errors import WaystationError

    try:
        code = _service(system).status(_say)
    except WaystationError as exc:
        fail(exc.message)
        raise typer.Exit(1) from None
    if code:
        raise typer.Exit(code)
