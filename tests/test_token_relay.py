"""Streaming from a model's owner thread: the first piece at once, fast pieces a few per hop, every
piece in order, and none left behind when generation ends."""

from __future__ import annotations

import asyncio
import threading
import time

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink
from waystation.adapters.models.threaded import ThreadedBackend
from waystation.adapters.models.token_relay import TokenRelay


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.got = asyncio.Event()

    def __call__(self, text: str) -> None:
        self.calls.append((time.monotonic(), text))
        self.got.set()

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.calls)


async def _from_thread(work: object) -> None:
    thread = threading.Thread(target=work)  # type: ignore[arg-type]
    thread.start()
    await asyncio.to_thread(thread.join)


async def test_the_first_piece_goes_at_once() -> None:
    sink = Sink()
    relay = TokenRelay(asyncio.get_running_loop(), sink, interval=30.0)
    started = time.monotonic()
    await _from_thread(lambda: relay.emit("Hello"))
    await asyncio.wait_for(sink.got.wait(), 5)
    assert sink.text == "Hello"
    assert sink.calls[0][0] - started < 5  # not the 30 s interval
    relay.flush()


async def test_pieces_that_come_fast_share_a_hop_and_keep_their_order() -> None:
    sink = Sink()
    relay = TokenRelay(asyncio.get_running_loop(), sink, interval=0.05)
    pieces = [f"{n} " for n in range(2000)]

    def produce() -> None:
        for piece in pieces:
            relay.emit(piece)

    await _from_thread(produce)
    await asyncio.sleep(0.2)  # two intervals: what was pending has gone
    assert sink.text == "".join(pieces)
    assert len(sink.calls) <= 10, "2,000 pieces in a burst take a few hops, not one each"
    relay.flush()
    assert sink.text == "".join(pieces)


async def test_flush_sends_what_is_pending_without_waiting() -> None:
    sink = Sink()
    relay = TokenRelay(asyncio.get_running_loop(), sink, interval=30.0)
    await _from_thread(lambda: relay.emit("a"))
    await asyncio.wait_for(sink.got.wait(), 5)
    await _from_thread(lambda: [relay.emit(p) for p in ("b", "c")])
    await asyncio.sleep(0.05)
    assert sink.text == "a", "b and c wait for the interval"
    relay.flush()
    assert [text for _, text in sink.calls] == ["a", "bc"]
    relay.flush()  # nothing more, nothing sent twice
    assert sink.text == "abc"


async def test_after_a_quiet_interval_the_next_piece_goes_at_once() -> None:
    sink = Sink()
    relay = TokenRelay(asyncio.get_running_loop(), sink, interval=0.02)
    await _from_thread(lambda: relay.emit("a"))
    await asyncio.wait_for(sink.got.wait(), 5)
    await asyncio.sleep(0.1)  # the relay's tick found nothing and went quiet
    sink.got.clear()
    relay._interval = 30.0  # a next tick would be far away: only an immediate hop can deliver
    await _from_thread(lambda: relay.emit("b"))
    await asyncio.wait_for(sink.got.wait(), 5)
    assert sink.text == "ab"
    relay.flush()


class Chatty(ThreadedBackend[str]):
    """A model that produces pieces as fast as a loop can call it."""

    name = "chatty"

    def load_blocking(self) -> str:
        return "loaded"

    def generate_blocking(self, handle: str, request: GenerationRequest, emit: TokenSink) -> Generation:
        pieces = [f"w{n} " for n in range(request.max_tokens)]
        for piece in pieces:
            emit(piece)
        return Generation(text="".join(pieces), completion_tokens=len(pieces))


async def test_a_generation_delivers_every_piece_before_it_returns() -> None:
    backend = Chatty("none")
    try:
        sink = Sink()
        generation = await backend.generate(GenerationRequest(messages=[], max_tokens=5000), sink)
        assert sink.text == generation.text, "all of it, in order, by the time generate returns"
        assert sink.calls[0][1].startswith("w0 ")
        assert len(sink.calls) < 500, "5,000 fast pieces do not take 5,000 loop hops"
    finally:
        await backend.close()
