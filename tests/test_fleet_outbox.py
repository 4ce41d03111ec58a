"""The outbox alone, on a real database and the in-memory hub: chain order, the position kept,
and no resend of what the hub holds, even with de-duplication off (beyond any window)."""

from __future__ import annotations

import json

import pytest

from waystation.adapters.fleet.outbox import Outbox
from waystation.config import QueueSettings
from waystation.db import Database
from waystation.errors import FleetUnavailable
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.testing import MemoryHub

SUBJECT = "waystation.edge.receipts"


async def make_receipts(db: Database, count: int) -> list[str]:
    store = TaskStore(db, QueueSettings())
    args = {"method": "GET", "url": "http://127.0.0.1:9/", "headers": {}}
    for _ in range(count):
        task, _ = await store.enqueue(NewTask(tool="http_request", args=args, host="127.0.0.1:9"))
        await store.cancel(task.id)
    return [row["id"] for row in await db.fetchall("SELECT id FROM receipts ORDER BY seq")]


def held_ids(hub: MemoryHub) -> list[str]:
    return [json.loads(data)["id"] for _, data in hub.held(SUBJECT)]


async def outbox(db: Database, hub: MemoryHub) -> Outbox:
    box = Outbox(db, hub, "edge")
    await box.load()
    return box


async def test_drains_in_chain_order_and_keeps_its_position(db: Database) -> None:
    chain = await make_receipts(db, 450)
    hub = MemoryHub(window_s=0)
    assert await (await outbox(db, hub)).drain(lambda: True) == 450
    assert held_ids(hub) == chain
    assert await (await outbox(db, hub)).drain(lambda: True) == 0  # a restart sends nothing again
    more = await make_receipts(db, 3)
    assert await (await outbox(db, hub)).drain(lambda: True) == 3
    assert held_ids(hub) == more


@pytest.mark.parametrize("lost_at", [1, 137, 200, 201, 450])
async def test_a_lost_ack_is_not_resent_even_beyond_the_duplicate_window(db: Database, lost_at: int) -> None:
    chain = await make_receipts(db, 450)
    hub = MemoryHub(window_s=0)  # no de-duplication at all: only the resync can prevent a resend
    hub.lose_ack_at(lost_at)
    with pytest.raises(FleetUnavailable):
        await (await outbox(db, hub)).drain(lambda: True)
    hub.down = False
    await (await outbox(db, hub)).drain(lambda: True)  # as after a kill -9 and a restart
    assert held_ids(hub) == chain


async def test_a_broken_link_resumes_on_the_same_outbox_without_a_resend(db: Database) -> None:
    chain = await make_receipts(db, 50)
    hub = MemoryHub(window_s=0)
    box = await outbox(db, hub)
    hub.lose_ack_at(20)
    with pytest.raises(FleetUnavailable):
        await box.drain(lambda: True)
    hub.down = False
    await box.drain(lambda: True)
    assert held_ids(hub) == chain


async def test_another_chain_under_the_same_host_name_is_not_skipped(db: Database) -> None:
    chain = await make_receipts(db, 5)
    hub = MemoryHub()
    await hub.publish(SUBJECT, b'{"id": "someone-else"}', "someone-else", {"Waystation-Seq": "3"})
    await (await outbox(db, hub)).drain(lambda: True)
    assert held_ids(hub) == ["someone-else", *chain]


async def test_offline_stops_the_drain_between_receipts(db: Database) -> None:
    await make_receipts(db, 10)
    hub = MemoryHub()
    budget = iter([True, True, True, False])
    assert await (await outbox(db, hub)).drain(lambda: next(budget, False)) == 2


async def test_a_checkpoint_goes_once_its_receipts_are_there(db: Database) -> None:
    await make_receipts(db, 4)
    hub = MemoryHub()
    box = await outbox(db, hub)
    note = "waystation/edge\n4\n" + "A" * 43 + "=\n\n— waystation/edge sig\n"
    assert not await box.checkpoint(note)  # the hub has none of its receipts yet
    await box.drain(lambda: True)
    assert await box.checkpoint(note)
    assert not await box.checkpoint(note)  # once
    assert [h["Nats-Msg-Id"] for h, _ in hub.held("waystation.edge.checkpoints")] == ["edge-4"]


async def test_a_new_hub_or_a_renamed_host_gets_the_chain_from_its_start(db: Database) -> None:
    chain = await make_receipts(db, 5)
    await (await outbox(db, MemoryHub(window_s=0))).drain(lambda: True)
    fresh = MemoryHub(window_s=0)  # the position says 5, but this hub holds nothing of ours
    assert await (await outbox(db, fresh)).drain(lambda: True) == 5
    assert held_ids(fresh) == chain


async def test_a_hub_restored_from_an_older_copy_gets_what_it_lost(db: Database) -> None:
    chain = await make_receipts(db, 8)
    hub = MemoryHub(window_s=0)
    await (await outbox(db, hub)).drain(lambda: True)
    hub.streams[SUBJECT] = hub.streams[SUBJECT][:3]  # its storage rolled back to an older copy
    assert await (await outbox(db, hub)).drain(lambda: True) == 5
    assert held_ids(hub) == chain


async def test_a_foreign_message_on_the_subject_does_not_make_it_resend_the_chain(db: Database) -> None:
    """Issue 20, item 3: one header-less `{}` published to the host's receipts subject made it
    resend its whole chain (300 of 300) at the next resync."""
    await make_receipts(db, 300)
    hub = MemoryHub(window_s=0)
    await (await outbox(db, hub)).drain(lambda: True)
    hub.streams[SUBJECT].append(({}, b"{}"))  # anyone's, no Waystation-Seq
    assert await (await outbox(db, hub)).drain(lambda: True) == 0  # as at the next resync
    chain = await make_receipts(db, 2)
    assert await (await outbox(db, hub)).drain(lambda: True) == 2
    assert [json.loads(d)["id"] for _, d in hub.held(SUBJECT) if d != b"{}"] == chain
