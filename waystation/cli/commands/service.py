"""`waystation service install|uninstall|status`: the agent as a systemd or launchd service."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
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


def closed_to_others(path: Path) -> Path | None:
    """The first directory on the way to `path` that other users cannot pass through (no o+x),
    or None: the system unit runs as the `waystation` user, and a venv in a 0700 home (Debian's
    default) is out of its reach."""
    for directory in reversed(path.parents):
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def _reachable_by_the_service_user() -> None:
    """Refuse a system install the service user could not run, saying what to do."""
    import waystation

    for path in (Path(sys.executable), Path(sys.executable).resolve(), Path(waystation.__file__).resolve()):
        closed = closed_to_others(path)
        if closed is not None:
            from waystation.service import SYSTEM_USER, ServiceError

            raise ServiceError(
                f"the system unit would run {path}, but {closed} is closed to other users (mode "
                f"{stat.S_IMODE(os.stat(closed).st_mode):o}), so user `{SYSTEM_USER}` cannot reach it; "
                "install Waystation where others can read it (e.g. python3 -m venv /opt/waystation), "
                f"or chmod o+x {closed}"
            )


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
        if system:
            _reachable_by_the_service_user()
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
