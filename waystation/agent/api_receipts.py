"""The receipt routes: the chain, one receipt, verify (against a checkpoint too), the signed
checkpoint, an inclusion proof, and the verifier key an auditor needs."""

from __future__ import annotations

from aiohttp import web

from waystation.agent.http_io import json_body, query_int, station_of
from waystation.errors import MalformedRequest
from waystation.station.ops import receipts


def add_receipt_routes(app: web.Application) -> None:
    app.router.add_get("/v1/receipts", list_receipts)
    app.router.add_get("/v1/receipts/verify", verify_receipts)
    app.router.add_post("/v1/receipts/verify", verify_against)
    app.router.add_get("/v1/receipts/checkpoint", checkpoint)
    app.router.add_get("/v1/receipts/key", key)
    app.router.add_get("/v1/receipts/{id}", get_receipt)  # after the fixed names above
    app.router.add_get("/v1/receipts/{id}/proof", prove)


async def list_receipts(request: web.Request) -> web.Response:
    after = request.query.get("after") or None
    limit = query_int(request, "limit", 100)
    return web.json_response(await receipts.after(station_of(request), after, limit))


async def get_receipt(request: web.Request) -> web.Response:
    return web.json_response(await receipts.get(station_of(request), request.match_info["id"]))


async def verify_receipts(request: web.Request) -> web.Response:
    return web.json_response(await receipts.verify(station_of(request)))


async def verify_against(request: web.Request) -> web.Response:
    """`{"checkpoint": "<signed note>"}`: verify, and prove the receipts extend that checkpoint."""
    note = (await json_body(request)).get("checkpoint")
    if not isinstance(note, str) or not note.strip():
        raise MalformedRequest("checkpoint must be the signed note's text")
    return web.json_response(await receipts.verify(station_of(request), note))


async def checkpoint(request: web.Request) -> web.Response:
    return web.json_response(await receipts.checkpoint(station_of(request)))


async def key(request: web.Request) -> web.Response:
    return web.json_response(await receipts.key(station_of(request)))


async def prove(request: web.Request) -> web.Response:
    return web.json_response(await receipts.prove(station_of(request), request.match_info["id"]))
