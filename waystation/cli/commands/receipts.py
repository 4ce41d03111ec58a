"""`waystation receipts ...`: list, show, export and verify the receipt chain; sign checkpoints,
prove a receipt, and check a proof offline.

All of it works straight on the database when no agent runs; `verify-proof` needs neither.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from waystation.cli.common import JsonFlag, fail, typer_app, waystation

receipts_app = typer_app(
    help="List, show, export and verify the receipt chain; signed checkpoints and proofs.",
    no_args_is_help=True,
)


@receipts_app.command("ls")
def receipts_ls(
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many (up to 1000).")
    ] = 20,
    after: Annotated[
        str | None, typer.Option("--after", metavar="ID", help="Start after this receipt instead of the end.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the latest receipts in chain order (oldest first); `--after` pages from a receipt.

    ```
    waystation receipts ls --limit 5 --json
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        items = ws.receipts_after(after, limit) if after else ws.latest_receipts(limit)
    render.output(items, as_json, render.receipts_table)


@receipts_app.command("show")
def receipts_show(
    receipt_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False
) -> None:
    """Show one receipt: status, reason, route and lanes, usage, hashes."""
    from waystation.cli import render

    with waystation() as ws:
        receipt = ws.get_receipt(receipt_id)
    render.output(receipt, as_json, render.receipt_detail)


@receipts_app.command("export")
def receipts_export() -> None:
    """Write every receipt as JSON Lines on stdout, in chain order (canonical JSON, one per line).

    ```
    waystation receipts export > receipts.jsonl
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        render.emit_json_lines(ws.iter_receipts())


@receipts_app.command("verify")
def receipts_verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            metavar="FILE",
            help="A signed checkpoint kept earlier: prove the receipts still extend it.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check the hash chain, the Merkle tree, and that the receipts extend a signed checkpoint
    (FILE, else the last one the agent kept): exit 0 when they do, 1 naming the first receipt that
    breaks the chain, or the truncation, rollback or rewrite.

    ```
    waystation receipts checkpoint > ~/elsewhere/checkpoint   # keep one off this disk
    waystation receipts verify --checkpoint ~/elsewhere/checkpoint && echo intact
    ```
    """
    from waystation.cli import render

    note = _read(checkpoint) if checkpoint is not None else None
    with waystation() as ws:
        result = ws.verify_receipts(note)
    if as_json:
        render.emit_json(result)
    count = result.get("count", 0)
    if result.get("ok"):
        if not as_json:
            kept = result.get("checkpoint")
            extends = f"; extends the signed checkpoint of {kept['size']}" if kept and kept["size"] else ""
            render.say(f"chain intact: {count} receipt{'' if count == 1 else 's'}{extends}")
        return
    broken, reason = result.get("first_broken_id"), result.get("reason")
    where = f"chain broken at receipt {broken} (#{count} in chain order)" if broken else "receipts not intact"
    fail(f"{where}: {reason}")
    raise typer.Exit(1)


@receipts_app.command("key")
def receipts_key() -> None:
    """Print the verifier key of this host's checkpoints (C2SP note format): all an auditor needs
    for `receipts verify-proof`."""
    from waystation.cli import render

    with waystation() as ws:
        render.say(ws.receipts_key()["key"])


@receipts_app.command("checkpoint")
def receipts_checkpoint(as_json: JsonFlag = False) -> None:
    """Print a signed checkpoint of the receipts now (C2SP tlog-checkpoint): origin, tree size,
    root hash, signature. Keep them elsewhere to catch a rewrite later.

    ```
    waystation receipts checkpoint >> ~/elsewhere/checkpoints
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        made = ws.checkpoint()
    if as_json:
        render.emit_json(made)
    else:
        sys.stdout.write(made["note"])


@receipts_app.command("prove")
def receipts_prove(
    receipt_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False
) -> None:
    """Print an inclusion proof of a receipt (the receipt, its audit path, the signed checkpoint),
    a JSON document `receipts verify-proof` checks anywhere.

    ```
    waystation receipts prove r_0194f2c3a1b --json > proof.json
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        proof = ws.prove(receipt_id)
    render.emit_json(proof)  # `as_json` or not: what verify-proof reads


@receipts_app.command("verify-proof")
def receipts_verify_proof(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A proof from `receipts prove`.")],
    key: Annotated[
        str, typer.Option("--key", metavar="KEY", help="The host's verifier key, or a file holding it.")
    ],
) -> None:
    """Check a receipt's proof offline: no agent, no database, only the host's verifier key
    (`receipts key` on that host). Exit 0 when the receipt is in the signed tree, 1 otherwise.

    ```
    waystation receipts verify-proof proof.json --key "$(cat host.key)"
    ```
    """
    from waystation.cli import render
    from waystation.errors import BadCheckpoint
    from waystation.receipts.checkpoints import VerifierKey
    from waystation.receipts.proofs import check

    try:
        verifier = VerifierKey.parse(_read(Path(key)) if Path(key).is_file() else key)
        proof = json.loads(_read(file))
        signed = check(proof, verifier)
    except (BadCheckpoint, ValueError) as exc:
        fail(f"proof not valid: {getattr(exc, 'message', exc)}")
        raise typer.Exit(1) from None
    render.say(
        f"proof valid: receipt {proof['receipt']['id']} is leaf {proof['leaf_index']} of the "
        f"{signed.size} receipts {signed.origin} signed"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        raise typer.Exit(2) from None
