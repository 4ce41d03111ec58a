"""`waystation models ...`: get, list, inspect and remove the local models a turn may name.

`pull`, `ls` and `rm` go through the agent when it runs (its state directory, its memory: a
removed model is unloaded first) and work straight on the state directory when it does not;
`ps` asks the agent what it has loaded. A pull through the agent takes this shell's HF_TOKEN and
HF_ENDPOINT along for that pull only, since the agent may run as a service that has neither.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from waystation import contract
from waystation.cli.common import JsonFlag, stderr_is_terminal, typer_app, waystation

if TYPE_CHECKING:
    from waystation.cli.client import AgentClient
    from waystation.cli.direct import DirectStation

models_app = typer_app(
    help="Get, list, inspect and remove local models (a turn's `--model NAME`).", no_args_is_help=True
)


@models_app.command("pull")
def models_pull(
    source: Annotated[
        str, typer.Argument(metavar="SOURCE", help="hf:OWNER/REPO/FILE (Hugging Face) or an http(s) URL.")
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The name to keep it under (default: from the file's name)."),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", metavar="HEX", help="The file's sha256: anything else is refused."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Download a GGUF model under a name. A download that stops is resumed by the same pull.

    A Hugging Face file is checked against the sha256 the hub gives for it; a URL's against
    `--sha256` when given (else it is kept unverified, and says so). `HF_TOKEN` is sent to the
    hub for gated repositories, never stored; `HF_ENDPOINT` names another hub (a mirror).
    The default name is the file's, lower case, without `.gguf`:
    `SmolLM2-135M-Instruct-Q8_0.gguf` becomes `smollm2-135m-instruct-q8_0`.

    ```
    waystation models pull hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q8_0.gguf
    waystation models pull https://example.com/m.gguf --name mine --sha256 9f86d0...
    waystation turn --model smollm2-135m-instruct-q8_0 "hello"
    ```
    """
    from waystation.cli import render
    from waystation.station.ops import models

    bar = PullBar(source, enabled=not as_json and stderr_is_terminal())
    body: dict[str, Any] = {"source": source}
    if name is not None:
        body["name"] = name
    if sha256 is not None:
        body["sha256"] = sha256

    def agent(client: AgentClient) -> contract.Model:
        return _pull_via_agent(client, body, bar)

    def direct(station: DirectStation) -> contract.Model:
        return station.read(models.pull_source, source, name, sha256, bar)

    try:
        with waystation() as ws:
            model = ws.either(agent, direct)
    finally:
        bar.close()
    if as_json:
        render.emit_json(model)
        return
    details: Mapping[str, Any] = model.get("waystation") or {}
    digest = details.get("sha256") or ""
    render.say(f"pulled {model['id']} ({human_size(details.get('size'))}, sha256 {digest[:12]}…)")
    if not details.get("verified"):
        sys.stderr.write("note: not verified (no sha256 was known): give --sha256 to check a download\n")


def _pull_via_agent(client: AgentClient, body: dict[str, Any], bar: PullBar) -> contract.Model:
    from waystation.agent.api_models import ENDPOINT_HEADER, TOKEN_HEADER
    from waystation.cli.remote_errors import RemoteError, rebuild_error

    headers = {}
    if os.environ.get("HF_TOKEN"):
        headers[TOKEN_HEADER] = os.environ["HF_TOKEN"]
    if os.environ.get("HF_ENDPOINT"):
        headers[ENDPOINT_HEADER] = os.environ["HF_ENDPOINT"]
    for event, data in client.stream_sse("POST", "/v1/models/pull", json=body, headers=headers):
        if event == "progress" and isinstance(data, dict):
            bar(data)
        elif event == "done" and isinstance(data, dict):
            return cast(contract.Model, data)  # the agent's `done` event is the model object
        elif event == "error" and isinstance(data, dict):
            raise rebuild_error(str(data.get("code")), str(data.get("message")), 502, data.get("details"))
    raise RemoteError("pull_failed", "the agent's answer ended before the pull did; the same pull resumes it")


class PullBar:
    """Progress on stderr (a terminal only): bytes, speed and time left; quiet otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("resolving", total=None)
        self._label = label.rsplit("/", 1)[-1]

    def __call__(self, event: dict[str, Any]) -> None:
        if self._bar is None:
            return
        status = str(event.get("status") or "")
        description = self._label if status == "downloading" else f"{status} {self._label}"
        total = event.get("total")
        self._bar.update(
            self._task,
            description=description,
            completed=int(event.get("completed") or 0),
            total=int(total) if isinstance(total, int) else None,
        )

    def close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()


@models_app.command("ls")
def models_ls(as_json: JsonFlag = False) -> None:
    """List the models a turn may name: those pulled, the embedded one, the default marked `*`;
    then the downloads under way or stopped (`.partial/`), with their bytes so far."""
    from waystation.cli import render
    from waystation.station.ops import models

    with waystation() as ws:
        listing = ws.either(
            lambda client: client.request("GET", "/v1/models"), lambda d: d.read(models.list_models)
        )
    render.output(listing, as_json, _models_table)


def _models_table(listing: dict[str, Any]) -> None:
    from rich.table import Table

    from waystation.cli import render

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("NAME", "SIZE", "SHA256", "SOURCE", "PULLED"):
        table.add_column(column, no_wrap=column != "SOURCE")
    for model in listing.get("data") or []:
        details = model.get("waystation") or {}
        name = f"{model['id']} *" if details.get("default") else str(model["id"])
        table.add_row(
            name,
            human_size(details.get("size")),
            (details.get("sha256") or "-")[:12],
            details.get("source") or "-",
            render.ago(details.get("pulled_at")),
        )
    render.console().print(table)
    partial = (listing.get("waystation") or {}).get("partial") or []
    if partial:
        render.say("\nunfinished downloads (the same pull resumes one; `waystation doctor` says where):")
        for download in partial:
            name, source = download.get("name") or "?", download.get("source") or "?"
            render.say(f"  {name}  {human_size(download.get('size'))} so far  {source}")


@models_app.command("rm")
def models_rm(name: Annotated[str, typer.Argument(metavar="NAME")], as_json: JsonFlag = False) -> None:
    """Remove a named model (the agent unloads it first)."""
    from urllib.parse import quote

    from waystation.cli import render
    from waystation.station.ops import models

    with waystation() as ws:
        answer = ws.either(
            lambda client: client.request("DELETE", f"/v1/models/{quote(name, safe='')}"),
            lambda d: d.read(models.remove, name),
        )
    if as_json:
        render.emit_json(answer)
    else:
        render.say(f"removed {answer['id']}")


@models_app.command("ps")
def models_ps(as_json: JsonFlag = False) -> None:
    """What the running agent has in memory: each model, the memory it takes (weights and KV
    cache, as `[model] memory_budget_mb` counts them), its sequences generating now of those it
    may at once and the requests waiting for one, the parked turns' model state it keeps on disk
    (SAVED: entries and size; `-`: off) and when it unloads."""
    from waystation.cli import render

    with waystation() as ws:
        loaded = ws.need_agent("GET", "/v1/models/loaded")
    render.output(loaded, as_json, _loaded_table)


def _loaded_table(loaded: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from waystation.cli import render

    if not loaded:
        render.say("no model is loaded")
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("NAME", "BACKEND", "MEMORY", "SEQUENCES", "SAVED", "LOADED", "UNTIL"):
        table.add_column(column, no_wrap=True)
    for row in loaded:
        until = row.get("until")
        table.add_row(
            str(row.get("name")),
            str(row.get("backend")),
            human_size(row.get("memory", row.get("size"))),
            _sequences(row),
            _saved(row.get("saved_state")),
            render.ago(row.get("loaded_at")),
            until if until in ("busy", "forever") else render.ago(until),
        )
    render.console().print(table)


def _sequences(row: dict[str, Any]) -> str:
    """Sequences generating now of those it may at once ("1/4"), or "serial" (one at a time),
    and the requests waiting for one ("4/4 +2 waiting")."""
    parallel, waiting = row.get("parallel"), row.get("waiting")
    serial = not isinstance(parallel, int) or parallel <= 0
    now = "serial" if serial else f"{row.get('sequences', 0)}/{parallel}"
    return f"{now} +{waiting} waiting" if isinstance(waiting, int) and waiting > 0 else now


def _saved(saved: object) -> str:
    """Parked turns' model state kept on disk: "2 · 92 MB" (entries, bytes), "-" when off."""
    if not isinstance(saved, dict):
        return "-"
    return f"{saved.get('entries', 0)} · {human_size(saved.get('bytes', 0))}"


def human_size(size: object) -> str:
    """Bytes as people read file sizes (decimal units, as Ollama and the hub show them)."""
    from waystation.adapters.models.room import shown

    return shown(size) if isinstance(size, int) else "-"
