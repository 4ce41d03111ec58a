"""`waystation service`: the systemd units and the launchd agent, rendered, verified, installed.

Units are checked by systemd itself (`systemd-analyze verify`), the plist by plistlib and the
types Apple documents for launchd.plist(5). Installing runs the real command line in a temporary
HOME with fake `systemctl`/`launchctl`/`useradd` on PATH that record their arguments.
"""

from __future__ import annotations

import grp
import os
import plistlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support.agentproc import Agent

from waystation.agent.peer import PeerCredentials, peer_allowed, socket_gid
from waystation.service import UNIT_NAME, Service, example_files, launchd_agent

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_PACKAGE = "systemd"  # Debian's package with systemd-analyze


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", SYSTEMD_PACKAGE],
            env=env,
            capture_output=True,
            timeout=900,
            check=False,
        )
        found = shutil.which("systemd-analyze")
        if found:
            return found
    pytest.skip(f"systemd-analyze is missing and `apt-get install -y {SYSTEMD_PACKAGE}` was impossible here")


def verify_unit(text: str, tmp_path: Path, user: bool) -> None:
    """`systemd-analyze [--user] verify` must accept the unit without a single complaint."""
    analyze = _systemd_analyze()
    unit = tmp_path / "verify" / UNIT_NAME
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)
    # Short: the user units systemd-analyze also reads put sockets in it (gpg-agent's), whose
    # paths must fit in 108 bytes, and a pytest-xdist worker's tmp_path is long.
    runtime = tempfile.mkdtemp(prefix="ws-xdg-")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "SYSTEMD_LOG_LEVEL": "notice"}
    argv = [analyze, *(["--user"] if user else []), "verify", str(unit)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze complained:\n{result.stderr}"


def cli_env(home: Path, bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WAYSTATION_", "XDG_"))
        and k not in ("NOTIFY_SOCKET", "DBUS_SESSION_BUS_ADDRESS")
    }
    env["HOME"] = str(home)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def waystation(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "waystation", *args], capture_output=True, text=True, env=env, timeout=60
    )


def fake_tools(bin_dir: Path, record: Path, *names: str, fail: bool = False) -> None:
    """Scripts that append their name and arguments to `record` (and fail if asked)."""
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        script = bin_dir / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> "{record}"\n'
            + ('echo "Failed to connect to bus: No medium found" >&2\nexit 1\n' if fail else "exit 0\n")
        )
        script.chmod(0o755)


# --- rendering ----------------------------------------------------------------------------------


def test_print_user_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    result = waystation("service", "install", "--print", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    assert f"ExecStart={sys.executable} -m waystation run\n" in unit
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "WatchdogSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "RuntimeDirectory=waystation",
        "RuntimeDirectoryMode=0700",
    ):
        assert f"\n{line}\n" in unit, line
    writable = next(ln for ln in unit.splitlines() if ln.startswith("ReadWritePaths="))
    for part in (".config/waystation", ".local/share/waystation", ".local/state/waystation"):
        assert f"-{tmp_path}/{part}" in writable
    assert not (tmp_path / ".config").exists(), "--print must only print"
    verify_unit(unit, tmp_path, user=True)


def test_user_unit_keeps_waystation_home(tmp_path: Path) -> None:
    home = tmp_path / "my state"
    result = waystation("service", "install", "--print", env=cli_env(tmp_path, WAYSTATION_HOME=str(home)))
    assert result.returncode == 0, result.stderr
    assert f'Environment="WAYSTATION_HOME={home}"' in result.stdout
    assert f'ReadWritePaths="-{home}"' in result.stdout
    assert "RuntimeDirectory=" not in result.stdout
    verify_unit(result.stdout, tmp_path, user=True)


def test_print_system_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    result = waystation("service", "install", "--print", "--system", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    for line in (
        "User=waystation",
        "StateDirectory=waystation",
        "RuntimeDirectory=waystation",
        "RuntimeDirectoryMode=0750",
        "Environment=WAYSTATION_HOME=/var/lib/waystation",
        "Environment=WAYSTATION_SOCKET=/run/waystation/waystation.sock",
        "Environment=WAYSTATION_AGENT__SOCKET_GROUP=waystation",
        "Type=notify",
        "WatchdogSec=30",
        "ProtectSystem=strict",
    ):
        assert f"\n{line}\n" in unit, line
    verify_unit(unit, tmp_path, user=False)


def test_repository_files_are_the_rendered_templates() -> None:
    for name, text in example_files().items():
        assert (REPO / name).read_text() == text, f"{name} differs from waystation.service; re-render it"


# --- launchd ------------------------------------------------------------------------------------

# launchd.plist(5): the type of every key we write.
LAUNCHD_TYPES: dict[str, type] = {
    "Label": str,
    "ProgramArguments": list,
    "RunAtLoad": bool,
    "KeepAlive": dict,
    "ProcessType": str,
    "ThrottleInterval": int,
    "ExitTimeOut": int,
    "StandardOutPath": str,
    "StandardErrorPath": str,
    "EnvironmentVariables": dict,
}


def check_launchd(data: dict[str, object], logs: Path) -> None:
    assert set(data) <= set(LAUNCHD_TYPES)
    for key, kind in LAUNCHD_TYPES.items():
        assert isinstance(data[key], kind), key
        assert not (kind is int and isinstance(data[key], bool)), key
    assert data["Label"] == "dev.waystation.agent"
    assert data["ProgramArguments"] == [sys.executable, "-m", "waystation", "run"]
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ProcessType"] in ("Background", "Standard", "Adaptive", "Interactive")
    assert data["ProcessType"] == "Background"
    env = data["EnvironmentVariables"]
    assert isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(str(data[key])).parent == logs


def test_launchd_plist_round_trips_with_documented_types(tmp_path: Path) -> None:
    service = Service("launchd", env={"HOME": str(tmp_path), "WAYSTATION_HOME": str(tmp_path / "h")})
    text = service.render()
    data = plistlib.loads(text.encode())
    assert plistlib.loads(plistlib.dumps(data)) == data
    assert data == launchd_agent(sys.executable, service.paths, service.env or {})
    assert data["EnvironmentVariables"]["WAYSTATION_HOME"] == str(tmp_path / "h")
    check_launchd(data, tmp_path / "h" / "logs")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')


def test_launchd_install_bootstraps_and_uninstall_boots_out(tmp_path: Path) -> None:
    record = tmp_path / "calls.log"
    fake_tools(tmp_path / "bin", record, "launchctl")
    env = cli_env(tmp_path, tmp_path / "bin", WAYSTATION_HOME=str(tmp_path / "h"))
    service = Service("launchd", env=env)
    said: list[str] = []
    service.install(said.append)
    plist = tmp_path / "Library/LaunchAgents/dev.waystation.agent.plist"
    assert service.target == plist and plist.exists()
    check_launchd(plistlib.loads(plist.read_bytes()), tmp_path / "h" / "logs")
    assert (tmp_path / "h" / "logs").is_dir()
    assert f"launchctl bootstrap gui/{os.getuid()} {plist}" in record.read_text()
    assert any("bootstrap" in line for line in said)
    service.uninstall(said.append)
    assert not plist.exists()
    assert f"launchctl bootout gui/{os.getuid()}/dev.waystation.agent" in record.read_text().splitlines()[-1]


# --- install / uninstall / status with systemd ----------------------------------------------------


def test_install_writes_unit_and_enables_it(tmp_path: Path) -> None:
    record = tmp_path / "calls.log"
    fake_tools(tmp_path / "bin", record, "systemctl")
    env = cli_env(tmp_path, tmp_path / "bin")
    result = waystation("service", "install", env=env)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / ".config/systemd/user" / UNIT_NAME
    assert unit.exists()
    assert f"ExecStart={sys.executable} -m waystation run" in unit.read_text()
    calls = record.read_text().splitlines()
    assert calls == ["systemctl --user daemon-reload", f"systemctl --user enable --now {UNIT_NAME}"]
    assert f"wrote {unit}" in result.stdout
    assert "systemctl --user enable --now" in result.stdout
    # ProtectHome=read-only: the state dirs must exist to be made writable.
    for part in (".config/waystation", ".local/share/waystation", ".local/state/waystation/logs"):
        assert (tmp_path / part).is_dir(), part
    verify_unit(unit.read_text(), tmp_path, user=True)

    status = waystation("service", "status", env=env)
    assert f"installed: {unit}" in status.stdout
    assert f"systemctl --user show {UNIT_NAME}" in record.read_text()

    result = waystation("service", "uninstall", env=env)
    assert result.returncode == 0, result.stderr
    assert not unit.exists()
    calls = record.read_text().splitlines()
    assert calls[-2:] == [f"systemctl --user disable --now {UNIT_NAME}", "systemctl --user daemon-reload"]
    assert f"removed {unit}" in result.stdout

    status = waystation("service", "status", env=env)
    assert status.returncode == 1
    assert "not installed" in status.stdout


def test_install_without_systemctl_writes_the_file_and_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = cli_env(tmp_path, PATH=str(empty))
    result = subprocess.run(
        [sys.executable, "-m", "waystation", "service", "install"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    unit = tmp_path / ".config/systemd/user" / UNIT_NAME
    assert result.returncode == 1
    assert unit.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: systemctl not found"), result.stderr
    assert str(unit) in lines[0] and "waystation run" in lines[0]


def test_install_without_a_user_bus_fails_clearly(tmp_path: Path) -> None:
    record = tmp_path / "calls.log"
    fake_tools(tmp_path / "bin", record, "systemctl", fail=True)
    result = waystation("service", "install", env=cli_env(tmp_path, tmp_path / "bin"))
    assert result.returncode == 1
    assert "Failed to connect to bus" in result.stderr
    assert "loginctl enable-linger" in result.stderr
    assert (tmp_path / ".config/systemd/user" / UNIT_NAME).exists()


def test_system_install_creates_the_user_and_enables_the_unit(tmp_path: Path) -> None:
    record = tmp_path / "calls.log"
    fake_tools(tmp_path / "bin", record, "systemctl", "useradd")
    env = cli_env(tmp_path, tmp_path / "bin")
    service = Service("systemd", system=True, env=env, system_unit_dir=tmp_path / "etc")
    said: list[str] = []
    service.install(said.append)
    unit = tmp_path / "etc" / UNIT_NAME
    assert unit.exists() and "User=waystation" in unit.read_text()
    calls = record.read_text().splitlines()
    assert calls[-2:] == ["systemctl daemon-reload", f"systemctl enable --now {UNIT_NAME}"]
    try:
        import pwd

        pwd.getpwnam("waystation")
    except KeyError:
        assert calls[0].startswith("useradd --system --user-group")
    assert any("WAYSTATION_SOCKET=/run/waystation/waystation.sock" in line for line in said)
    service.uninstall(said.append)
    assert not unit.exists()
    assert f"systemctl disable --now {UNIT_NAME}" in record.read_text()


# --- the socket group ---------------------------------------------------------------------------


def test_peer_allowed_by_uid_or_group() -> None:
    me, group = 1000, 4242
    assert peer_allowed(PeerCredentials(None, me, frozenset({1000})), me, None)
    assert not peer_allowed(PeerCredentials(None, 1001, frozenset({group})), me, None)
    assert peer_allowed(PeerCredentials(None, 1001, frozenset({group})), me, group)
    assert not peer_allowed(PeerCredentials(None, 1001, frozenset({1001})), me, group)
    assert not peer_allowed(None, me, group)


def test_socket_group_names_the_key_when_unknown() -> None:
    assert socket_gid("") is None
    assert socket_gid("0") == 0
    with pytest.raises(Exception, match=r"agent\.socket_group"):
        socket_gid("no-such-group-here")


PEER_SCRIPT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("denied")
    sys.exit(0)
data = b""
try:  # a refused peer is cut off: a reset on send or receive, or an empty answer
    s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: w\\r\\nConnection: close\\r\\n\\r\\n")
    while chunk := s.recv(65536):
        data += chunk
except OSError:
    pass
print(data.split(b"\\r\\n", 1)[0].decode() or "nothing")
"""


def _as_user(sock: Path, uid: int, gid: int, extra: list[int]) -> str:
    result = subprocess.run(
        ["/usr/bin/python3", "-c", PEER_SCRIPT, str(sock)],
        user=uid,
        group=gid,
        extra_groups=extra,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout.strip() or result.stderr.strip()


def test_socket_group_members_may_use_the_socket(agent_factory: Callable[..., Agent]) -> None:
    if os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs root and a system python3 to run clients as other users")
    group = 65534  # nogroup: a group the test's clients can be given
    name = grp.getgrgid(group).gr_name
    agent = agent_factory(
        {"WAYSTATION_AGENT__SOCKET_GROUP": name, "WAYSTATION_CONNECTIVITY__MODE": "offline"}
    )
    agent.start()
    info = agent.socket.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group
    home = agent.socket.parent.stat()
    assert stat.S_IMODE(home.st_mode) == 0o750 and home.st_gid == group
    # Primary gid is the group; then a supplementary member; then an outsider.
    assert _as_user(agent.socket, 65534, group, []) == "HTTP/1.1 200 OK"
    assert _as_user(agent.socket, 4321, 4321, [group]) == "HTTP/1.1 200 OK"
    assert _as_user(agent.socket, 4322, 4322, []) == "denied"  # by the file system
    # With the file-system lock loosened, the gid check alone still refuses the outsider.
    agent.socket.chmod(0o666)
    agent.socket.parent.chmod(0o755)
    try:
        assert _as_user(agent.socket, 4322, 4322, []) == "nothing"
    finally:
        agent.socket.parent.chmod(0o750)
    assert "refused a socket peer" in agent.output()
    assert agent.stop() == 0


def test_without_socket_group_the_socket_stays_private(agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent.socket.parent.stat().st_mode) == 0o700
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(agent.socket))
    assert agent.stop() == 0


def test_a_venv_closed_to_other_users_is_found() -> None:
    """`service install --system` refuses a Python the `waystation` user could not reach (a
    venv in a 0700 home, Debian's default) and names the directory that closes it."""
    import tempfile

    from waystation.cli.commands.service import closed_to_others

    base = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own temp dirs sit in a 0700 directory
    try:
        python = base / "home" / "venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("")
        for directory in (base, base / "home", base / "home" / "venv", python.parent):
            directory.chmod(0o755)
        assert closed_to_others(python) is None
        (base / "home").chmod(0o700)
        assert closed_to_others(python) == base / "home"
    finally:
        shutil.rmtree(base)
