"""The agent as a background service: systemd units and the launchd agent, rendered and installed.

The templates live here, so a wheel install can render them; `systemd/` and `launchd/` in the
repository hold the same templates rendered with example paths (a test keeps them identical).
`waystation service install` renders them with this installation's real interpreter
(`sys.executable -m waystation run`) and state paths, writes the file, and asks systemd or
launchd to run it. Every step it takes is reported through `say`, one line each.
"""

from __future__ import annotations

import os
import plistlib
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from waystation import durable
from waystation.config import Paths
from waystation.errors import WaystationError

UNIT_NAME = "waystation.service"
LAUNCHD_LABEL = "dev.waystation.agent"
SYSTEM_USER = "waystation"
SYSTEM_HOME = "/var/lib/waystation"
SYSTEM_SOCKET = "/run/waystation/waystation.sock"
WATCHDOG_SEC = 30
# Variables that choose where the state lives: a unit keeps the ones set at install time.
PATH_ENV = ("WAYSTATION_HOME", "WAYSTATION_SOCKET")

Say = Callable[[str], None]


class ServiceError(WaystationError):
    code = "service_error"


# --- rendering --------------------------------------------------------------------------------


def _escape(value: str) -> str:
    """A value for a unit file: specifiers (%) and backslashes escaped, quoted if it has spaces."""
    value = value.replace("\\", "\\\\").replace("%", "%%")
    if any(c.isspace() or c in "\"'" for c in value):
        return '"' + value.replace('"', '\\"') + '"'
    return value


def _user_state_dirs(paths: Paths) -> list[Path]:
    """The directories the user agent writes: WAYSTATION_HOME, or config, data and state dirs."""
    dirs = [paths.config_file.parent, paths.database.parent, paths.logs.parent]
    return list(dict.fromkeys(dirs))


def render_systemd_user(python: str, paths: Paths, env: Mapping[str, str]) -> str:
    """The user unit (`systemctl --user`): sandboxed, watched, restarted on failure."""
    writable = _user_state_dirs(paths)
    runtime = ""
    if not env.get("WAYSTATION_HOME") and not env.get("WAYSTATION_SOCKET"):
        # The socket goes in $XDG_RUNTIME_DIR/waystation, and ProtectHome= makes /run/user
        # read-only: systemd makes that directory for us (0700) and keeps it writable.
        runtime = "RuntimeDirectory=waystation\nRuntimeDirectoryMode=0700\n"
    elif paths.socket.parent not in writable:
        writable.append(paths.socket.parent)
    environment = "".join(
        f"Environment={_escape(f'{name}={env[name]}')}\n" for name in PATH_ENV if env.get(name)
    )
    rw = " ".join(_escape(f"-{d}") for d in writable)
    return f"""\
# Waystation agent, systemd user unit. Install with `waystation service install`, which writes
# this installation's real paths; `waystation service install --print` shows the result.
[Unit]
Description=Waystation edge agent
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={_escape(python)} -m waystation run
Restart=on-failure
RestartSec=2
WatchdogSec={WATCHDOG_SEC}
LimitNOFILE=65536
TimeoutStopSec=15
Environment=PYTHONUNBUFFERED=1
{environment}{runtime}UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={rw}
PrivateTmp=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=default.target
"""


def render_systemd_system(python: str) -> str:
    """The system-wide unit: a dedicated user, state in /var/lib, the socket shared with a group."""
    # The interpreter must stay readable: hide /home and /root only when it lives elsewhere.
    in_home = python.startswith(("/home/", "/root/", "/run/user/"))
    protect_home = "read-only" if in_home else "yes"
    return f"""\
# Waystation agent, system-wide systemd unit, running as the dedicated user `{SYSTEM_USER}`.
# Install with `sudo waystation service install --system`. Members of the group `{SYSTEM_USER}`
# may use the socket: `export WAYSTATION_SOCKET={SYSTEM_SOCKET}`.
[Unit]
Description=Waystation edge agent (system-wide)
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
User={SYSTEM_USER}
Group={SYSTEM_USER}
ExecStart={_escape(python)} -m waystation run
Restart=on-failure
RestartSec=2
WatchdogSec={WATCHDOG_SEC}
LimitNOFILE=65536
TimeoutStopSec=15
StateDirectory=waystation
StateDirectoryMode=0750
RuntimeDirectory=waystation
RuntimeDirectoryMode=0750
Environment=PYTHONUNBUFFERED=1
Environment=WAYSTATION_HOME={SYSTEM_HOME}
Environment=WAYSTATION_SOCKET={SYSTEM_SOCKET}
Environment=WAYSTATION_AGENT__SOCKET_GROUP={SYSTEM_USER}
UMask=0027
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def launchd_agent(python: str, paths: Paths, env: Mapping[str, str]) -> dict[str, object]:
    """The LaunchAgent, as the dictionary plistlib writes."""
    environment = {"PYTHONUNBUFFERED": "1", "PATH": "/usr/local/bin:/opt/homebrew/bin:/usr/bin:/bin"}
    environment.update({name: env[name] for name in PATH_ENV if env.get(name)})
    return {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [python, "-m", "waystation", "run"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a crash, not after a clean stop
        "ProcessType": "Background",
        "ThrottleInterval": 10,
        "ExitTimeOut": 15,
        "StandardOutPath": str(paths.logs / "agent.out.log"),
        "StandardErrorPath": str(paths.logs / "agent.err.log"),
        "EnvironmentVariables": environment,
    }


def render_launchd(python: str, paths: Paths, env: Mapping[str, str]) -> str:
    return plistlib.dumps(launchd_agent(python, paths, env), sort_keys=False).decode()


# --- installing -------------------------------------------------------------------------------


@dataclass
class Service:
    """One service manager on this host, with everything it touches injectable for tests."""

    manager: str  # systemd | launchd
    system: bool = False
    env: Mapping[str, str] | None = None
    python: str = sys.executable
    system_unit_dir: Path = Path("/etc/systemd/system")

    def __post_init__(self) -> None:
        if self.env is None:
            self.env = dict(os.environ)
        if self.system and self.manager != "systemd":
            raise ServiceError("--system is for systemd (Linux); on macOS install the LaunchAgent")

    @classmethod
    def for_host(cls, system: bool = False) -> Service:
        return cls("launchd" if sys.platform == "darwin" else "systemd", system=system)

    @property
    def _env(self) -> Mapping[str, str]:
        assert self.env is not None
        return self.env

    @property
    def paths(self) -> Paths:
        return Paths.resolve(self._env)

    @property
    def _home(self) -> Path:
        home = self._env.get("HOME")
        return Path(home) if home else Path.home()

    @property
    def target(self) -> Path:
        if self.manager == "launchd":
            return self._home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        if self.system:
            return self.system_unit_dir / UNIT_NAME
        config = self._env.get("XDG_CONFIG_HOME") or str(self._home / ".config")
        return Path(config) / "systemd" / "user" / UNIT_NAME

    def render(self) -> str:
        if self.manager == "launchd":
            return render_launchd(self.python, self.paths, self._env)
        if self.system:
            return render_systemd_system(self.python)
        return render_systemd_user(self.python, self.paths, self._env)

    def _systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *([] if self.system else ["--user"]), *args]

    def _run(self, argv: Sequence[str], say: Say, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        if shutil.which(argv[0], path=self._env.get("PATH")) is None:
            raise ServiceError(f"{argv[0]} not found")
        if not quiet:
            say(f"ran: {' '.join(argv)}")
        return subprocess.run(
            list(argv), capture_output=True, text=True, env=dict(self._env), timeout=60, check=False
        )

    def _must(self, argv: Sequence[str], say: Say) -> None:
        result = self._run(argv, say)
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
            raise ServiceError(f"`{' '.join(argv)}` failed: {detail}")

    def install(self, say: Say) -> None:
        """Write the unit (making the state dirs it needs), then enable and start it."""
        if self.system:
            self._ensure_system_user(say)
        else:
            for directory in [*_user_state_dirs(self.paths), self.paths.logs]:
                durable.make_dirs(directory, 0o700)
        durable.make_dirs(self.target.parent)
        durable.write_atomic(self.target, self.render(), 0o644)
        say(f"wrote {self.target}")
        try:
            if self.manager == "launchd":
                domain = f"gui/{os.getuid()}"
                self._run(["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"], say, quiet=True)
                self._must(["launchctl", "bootstrap", domain, str(self.target)], say)
            else:
                self._must(self._systemctl("daemon-reload"), say)
                self._must(self._systemctl("enable", "--now", UNIT_NAME), say)
        except ServiceError as exc:
            raise ServiceError(f"{exc.message}. {self._manual_hint()}") from None
        say("the agent is enabled and started")
        if self.system:
            say(f"members of group {SYSTEM_USER} may use it: export WAYSTATION_SOCKET={SYSTEM_SOCKET}")
        elif self.manager == "systemd":
            say(f"to keep it running while you are logged out: loginctl enable-linger {self._user()}")

    def _manual_hint(self) -> str:
        if self.manager == "launchd":
            return (
                f"The plist is written to {self.target}; "
                f"load it with `launchctl bootstrap gui/$(id -u) {self.target}`"
            )
        scope = "" if self.system else " --user"
        bus = "" if self.system else " (a user bus needs a login session or `loginctl enable-linger`)"
        return (
            f"The unit is written to {self.target}; start it with "
            f"`systemctl{scope} daemon-reload && systemctl{scope} enable --now {UNIT_NAME}`{bus}, "
            "or run the agent in the foreground with `waystation run`"
        )

    def _user(self) -> str:
        return self._env.get("USER") or pwd.getpwuid(os.getuid()).pw_name

    def _ensure_system_user(self, say: Say) -> None:
        try:
            pwd.getpwnam(SYSTEM_USER)
            return
        except KeyError:
            pass
        argv = [
            "useradd", "--system", "--user-group", "--home-dir", SYSTEM_HOME,
            "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER,
        ]  # fmt: skip
        self._must(argv, say)

    def uninstall(self, say: Say) -> None:
        """Stop and disable the service, then remove its file. Not installed is not an error."""
        if not self.target.exists():
            say(f"not installed ({self.target} does not exist)")
            return
        if self.manager == "launchd":
            self._try(["launchctl", "bootout", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"], say)
            self.target.unlink()
            say(f"removed {self.target}")
            return
        self._try(self._systemctl("disable", "--now", UNIT_NAME), say)
        self.target.unlink()
        say(f"removed {self.target}")
        self._try(self._systemctl("daemon-reload"), say)

    def _try(self, argv: Sequence[str], say: Say) -> None:
        try:
            result = self._run(argv, say)
        except ServiceError as exc:
            say(f"skipped: {exc.message}")
            return
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
            say(f"warning: {detail}")

    def status(self, say: Say) -> int:
        """Print where the unit is and what the manager says; 0 running, 3 not running, 1 absent."""
        if not self.target.exists():
            say(f"not installed: {self.target} does not exist (`waystation service install`)")
            return 1
        say(f"installed: {self.target}")
        if self.manager == "launchd":
            argv = ["launchctl", "print", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"]
            try:
                result = self._run(argv, say, quiet=True)
            except ServiceError as exc:
                say(exc.message)
                return 3
            state = next((ln.split("=", 1)[1].strip() for ln in result.stdout.splitlines()
                          if ln.strip().startswith("state =")), "not loaded")  # fmt: skip
            say(f"state: {state}")
            return 0 if state == "running" else 3
        props = "ActiveState,SubState,UnitFileState,StatusText,MainPID"
        try:
            result = self._run(self._systemctl("show", UNIT_NAME, f"--property={props}"), say, quiet=True)
        except ServiceError as exc:
            say(exc.message)
            return 3
        if result.returncode != 0:
            say(f"systemctl: {' '.join(result.stderr.split())}")
            return 3
        shown = dict(ln.split("=", 1) for ln in result.stdout.splitlines() if "=" in ln)
        say(f"enabled: {shown.get('UnitFileState', 'unknown')}")
        say(f"active: {shown.get('ActiveState', 'unknown')} ({shown.get('SubState', '')})")
        if shown.get("StatusText"):
            say(f"status: {shown['StatusText']}")
        return 0 if shown.get("ActiveState") == "active" else 3


# --- the examples in the repository -------------------------------------------------------------

EXAMPLE_PYTHON = "/opt/waystation/bin/python"


def example_files() -> dict[str, str]:
    """`systemd/` and `launchd/` in the repository: the templates rendered for a user `you`
    whose Waystation lives in /opt/waystation (a test keeps them equal to this)."""
    home = Path("/home/you")
    linux = Paths(
        home / ".config/waystation/config.toml",
        home / ".local/share/waystation/waystation.db",
        Path("/run/user/1000/waystation/waystation.sock"),
        home / ".local/state/waystation/logs",
    )
    support = Path("/Users/you/Library/Application Support/waystation")
    mac = Paths(
        support / "config.toml", support / "waystation.db", support / "waystation.sock", support / "logs"
    )
    note = "# Example rendered for a user `you` with Waystation in /opt/waystation.\n"
    return {
        "systemd/waystation.service": note + render_systemd_user(EXAMPLE_PYTHON, linux, {}),
        "systemd/waystation-system.service": note + render_systemd_system(EXAMPLE_PYTHON),
        "launchd/dev.waystation.agent.plist": render_launchd(EXAMPLE_PYTHON, mac, {}),
    }
