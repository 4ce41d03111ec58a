"""The station's own things cannot be used: its config, its database, its receipts and their
signing key, or its agent. Start-up stops on most of these; the answer says which file and why."""

from __future__ import annotations

from waystation.errors.base import WaystationError


class ConfigError(WaystationError):
    code = "config_error"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


class DatabaseError(WaystationError):
    code = "database_error"
    http_status = 503

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"database {path}: {problem}")
        self.path = path
        self.problem = problem


class DatabaseLocked(DatabaseError):
    code = "database_locked"


class DatabaseReadOnly(DatabaseError):
    code = "database_read_only"


class DatabaseCorrupt(DatabaseError):
    code = "database_corrupt"


class DatabaseTooNew(DatabaseError):
    code = "database_too_new"


class DatabaseForeign(DatabaseError):
    """A valid SQLite file with someone else's tables and no Waystation schema version."""

    code = "database_foreign"


class DiskFull(DatabaseError):
    code = "disk_full"
    http_status = 507


class AgentNotRunning(WaystationError):
    code = "agent_not_running"
    http_status = 503
    exit_code = 3

    def __init__(self, socket_path: object) -> None:
        super().__init__(
            f"the agent is not running (no answer on {socket_path}); start it with `waystation run`"
        )
        self.socket_path = socket_path


class ReceiptsDamaged(WaystationError):
    """The receipts' Merkle tree lacks what the receipts say it holds: rows were removed or edited
    behind the agent's back (500; `receipts verify` names what)."""

    code = "receipts_damaged"

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}: the receipts were edited; `waystation receipts verify` names what")
        self.problem = problem


class SigningKeyUnusable(WaystationError):
    """The receipts' signing key file is there but is no key (truncated, overwritten, another
    format): checkpoints cannot be signed until it is restored or moved away (503)."""

    code = "signing_key_unusable"
    http_status = 503

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(
            f"{path} is not a usable signing key ({problem}): restore it from a backup, or move it "
            "away and a new key is made at the next signing (checkpoints the old key signed then "
            "verify only with its `receipts key`); until then checkpoints are not signed"
        )
        self.path = str(path)
        self.problem = problem


class CheckpointKept(WaystationError):
    """The kept receipts.checkpoint is not replaced: the new one is of another origin, or the
    receipts do not extend it (truncated, rolled back, rewritten). Signing stops until someone
    looks; the queue works on (409)."""

    code = "checkpoint_kept"
    http_status = 409

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(
            f"{path} is kept, not replaced: {problem}; `waystation receipts verify` says more. Move it "
            "away (keep a copy) to let the agent sign the receipts as they are"
        )
        self.path = str(path)
        self.problem = problem
