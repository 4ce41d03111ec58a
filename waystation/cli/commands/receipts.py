"""`waystation receipts ...`: list, show, export and verify the receipt chain.

All of it works straight on the database when no agent runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from waystation.cli.common import JsonFlag, fail, typer_app, waystation

receipts_app = typer_app(help="List, show, export and verify the receipt chain.", no_args_is_help=True)


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
def receipts_verify(as_json: JsonFlag = False) -> None:
    """Check the hash chain: exit 0 when intact, 1 naming the first receipt that breaks it and why.

    ```
    waystation receipts verify && echo intact
    ```
    """
    from waystation.cli import render

    with waystation() as ws:
        result = ws.verify_receipts()
    if as_json:
        render.emit_json(result)
    count = result.get("count", 0)
    if result.get("ok"):
        if not as_json:
            render.say(f"chain intact: {count} receipt{'' if count == 1 else 's'}")
        return
    broken, reason = result.get("first_broken_id"), result.get("reason")
    fail(f"chain broken at receipt {broken} (#{count} in chain order): {reason}")
    raise typer.Exit(1)
