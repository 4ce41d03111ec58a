"""A power cut at each step of `models pull` finishing (issue 24, item 2): the download synced,
its record written, the file renamed into models/, the lock and the download directory removed.

A child (support/powercut/pulling.py) pulls the file, the first time or as an update of the model
already there, and the power goes just before one operation on the disk (a freeze point in
place, lazyfs.py), the last ones of the pull all taken and earlier ones sampled. After the cut:
- the model is there whole and its record names its bytes (sha256, size), or it is absent (a
  first pull cut short), or it is the old one (an update cut short) with its old record or none
  believed; never a record naming other bytes, never a torn file under the model's name;
- a pull the child was told finished is there whole;
- the same pull again needs no repair: it finishes, and leaves neither a lock nor a download.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fakehub import FakeHub, fake_gguf
from support.powercut import pulling
from support.powercut.children import hear, kill, start
from support.powercut.disk import Cut, LazyDisk

from waystation import durable
from waystation.adapters.models.pull import claimed, download, plan
from waystation.adapters.models.store import ModelStore

NAME = "cut-model"
FILE = "Cut-Model.gguf"
LAST = 8  # the pull's last operations, all of them cut at (the finish); earlier ones sampled


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        yield hub


def pull_here(root: Path, url: str, sha256: str) -> None:
    store = ModelStore(root)
    wanted = plan(url, None, sha256, token=None, endpoint=None)
    with claimed(wanted, store):
        asyncio.run(download(wanted, store))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_left(root: Path, acknowledged: bool, old: bytes | None, new: bytes, when: str) -> None:
    """What the cut left: one model whole with its own record, or none (or the old one)."""
    model = ModelStore(root).find(NAME)
    if model is None:
        assert old is None and not acknowledged, f"{when}: the model is gone"
        return
    data = model.path.read_bytes()
    assert data in (new, old), f"{when}: the model's file is neither the old one nor the new one whole"
    # An update cut between its record and its rename: the new record is not believed of the old
    # file (store.py's _describes), which then shows no sha256 until pulled again.
    assert model.sha256 in (sha(data), None), f"{when}: its record names other bytes"
    assert model.verified == (model.sha256 is not None), when
    assert (data == new and model.verified) or not acknowledged, f"{when}: a pull told finished was lost"


def prepared(disk: LazyDisk, hub: FakeHub, home: str, old: bytes | None, new: bytes) -> Path:
    """A fresh models/ to pull `new` into (from the URL that served `old` first, if given)."""
    root = disk.path / home / "models"
    durable.make_dirs(root.parent)
    if old is not None:
        hub.plain[FILE] = old
        pull_here(root, hub.file_url(FILE), sha(old))
    hub.plain[FILE] = new
    return root


def pulled_until_cut(disk: LazyDisk, root: Path, url: str, sha256: str, point: int) -> tuple[bool, Cut]:
    """The pull in a child, the power going at freeze point `point`: (told finished, the cut)."""
    disk.freeze_at(point)
    child, reader = start(pulling.pull, str(root), url, sha256)
    finished = hear(reader, lambda _: None, time.monotonic() + 60, stop_at="pulled")
    kill(child, reader, lambda _: None)
    return finished, disk.cut_in_place(tear_seed=point)


@pytest.mark.timeout(600)
def test_a_power_cut_at_any_step_of_a_pull_finishing_needs_no_repair(
    lazy_disk: LazyDisk,
    hub: FakeHub,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    old, new = fake_gguf(96_000, seed=1), fake_gguf(96_000, seed=2)
    url = hub.file_url(FILE)
    rng = random.Random(7)
    cuts = 0
    for before in (None, old):  # a first pull, an update
        what = "a first pull" if before is None else "an update"
        root = prepared(lazy_disk, hub, f"{what}-counted", before, new)
        finished, counting = pulled_until_cut(lazy_disk, root, url, sha(new), 10**9)
        assert finished
        points = counting.counted  # every operation of a whole pull
        earlier = range(points - LAST)
        chosen = [
            *range(max(0, points - LAST), points),
            *rng.sample(earlier, min(len(earlier), soak_length(1, 40))),
        ]
        for point in chosen:
            root = prepared(lazy_disk, hub, f"{what}-{point}", before, new)
            finished, cut = pulled_until_cut(lazy_disk, root, url, sha(new), point)
            when = f"{what} cut at operation {point} of {points}"
            assert cut.frozen or finished, f"{when}: the freeze point was not reached"
            check_left(root, finished, before, new, when)
            pull_here(root, url, sha(new))  # the same pull again: no repair needed
            check_left(root, True, before, new, f"{when}, pulled again")
            assert ModelStore(root).partials() == [] and not (root / ".partial").exists(), when
            cuts += 1
    soak_report(f"{cuts} power cuts while a pull finished (first pulls and updates): none needed a repair")
