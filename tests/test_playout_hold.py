"""Held utterances in the playout buffer: queued, bounded, silent until released."""

from __future__ import annotations

import asyncio

import numpy as np

from media.playout import PlayoutBuffer, heard_text

FRAME = 320
"""20 ms at 16 kHz."""


async def test_held_audio_is_silent_until_released_then_plays_in_order() -> None:
    buf = PlayoutBuffer(16000, max_buffered_ms=1000)
    buf.open_utterance("u", held=True)
    assert buf.is_held("u")
    seg = buf.open_segment("u", "Paris is the capital.")
    await buf.push(seg, np.arange(1, 6401, dtype=np.int16))  # 400 ms
    buf.close_segment(seg)
    for _ in range(10):
        pcm, speech = buf.pull()
        assert not speech and not pcm.any()
    assert buf.buffered_ms == 400 and seg.played_samples == 0
    assert buf.first_audio_at("u") is None and heard_text(buf.segments("u")) == ""
    buf.release("u")
    assert not buf.is_held("u")
    pcm, speech = buf.pull()
    assert speech and np.array_equal(pcm, np.arange(1, FRAME + 1, dtype=np.int16))
    assert buf.first_audio_at("u") is not None
    buf.finish_utterance("u")
    while buf.buffered_ms:
        buf.pull()
    await asyncio.wait_for(buf.wait_done("u"), 1)
    assert heard_text(buf.segments("u")) == "Paris is the capital."


async def test_a_held_utterance_holds_the_line_and_its_bound() -> None:
    buf = PlayoutBuffer(16000, max_buffered_ms=200)
    buf.open_utterance("held", held=True)
    seg = buf.open_segment("held", "a long held answer")
    push = asyncio.create_task(buf.push(seg, np.ones(8000, np.int16)))  # 500 ms > bound
    await asyncio.sleep(0.01)
    # the held audio filled the buffer to its bound; the producer waits for room
    assert not push.done() and buf.buffered_ms == 200
    for _ in range(20):
        assert not buf.pull()[1]
    await asyncio.sleep(0.01)
    assert not push.done() and buf.buffered_ms == 200
    buf.release("held")
    for _ in range(30):
        buf.pull()
        await asyncio.sleep(0)
    await asyncio.wait_for(push, 1)
    assert seg.pushed_samples == 8000


async def test_cleared_held_utterance_is_never_heard_and_unblocks_the_next() -> None:
    buf = PlayoutBuffer(16000, max_buffered_ms=100)
    buf.open_utterance("held", held=True)
    seg = buf.open_segment("held", "never heard")
    push = asyncio.create_task(buf.push(seg, np.ones(4800, np.int16)))  # waits on the bound
    await asyncio.sleep(0.01)
    assert not push.done()
    buf.clear("held")
    await asyncio.wait_for(push, 1)  # the producer is let go; its late audio is dropped
    assert buf.is_done("held") and buf.buffered_ms == 0
    buf.forget("held")
    buf.release("held")  # a forgotten utterance cannot be revived by a late release
    assert heard_text(buf.segments("held")) == ""
    other = buf.open_segment("next", "spoken")
    await buf.push(other, np.ones(FRAME, np.int16))
    assert buf.pull()[1] and other.played_samples == FRAME
    assert seg.played_samples == 0


async def test_hold_applies_when_opened_and_release_of_unheld_is_a_no_op() -> None:
    buf = PlayoutBuffer(16000)
    seg = buf.open_segment("u", "x")  # opened unheld by its first segment
    buf.open_utterance("u", held=True)  # idempotent: the first opening decides
    assert not buf.is_held("u")
    await buf.push(seg, np.ones(FRAME, np.int16))
    buf.release("u")
    buf.release("unknown")
    assert buf.pull()[1]


async def test_a_held_utterance_has_a_small_bound_of_its_own() -> None:
    # the buffer would take 20 s; a held utterance stops at its 300 ms
    buf = PlayoutBuffer(16000, max_buffered_ms=20_000, max_held_ms=300)
    buf.open_utterance("held", held=True)
    seg = buf.open_segment("held", "a long answer prepared on a guess")
    push = asyncio.create_task(buf.push(seg, np.ones(16000, np.int16)))  # 1 s
    await asyncio.sleep(0.01)
    assert not push.done() and buf.buffered_ms == 300 and seg.pushed_samples == 4800
    await asyncio.sleep(0.05)
    assert not push.done() and seg.pushed_samples == 4800  # it waits for the release
    buf.release("held")
    await asyncio.wait_for(push, 1)  # released: the rest goes in at once (the buffer has room)
    assert seg.pushed_samples == 16000 and buf.buffered_ms == 1000
    assert buf.pull()[1] and seg.played_samples == FRAME
    # an utterance that is not held is bound only by the buffer
    free = buf.open_segment("free", "said at once")
    await asyncio.wait_for(buf.push(free, np.ones(16000, np.int16)), 1)


async def test_a_cleared_held_utterance_lets_its_waiting_producer_go() -> None:
    buf = PlayoutBuffer(16000, max_held_ms=100)
    buf.open_utterance("held", held=True)
    seg = buf.open_segment("held", "never heard")
    push = asyncio.create_task(buf.push(seg, np.ones(8000, np.int16)))
    await asyncio.sleep(0.01)
    assert not push.done() and buf.buffered_ms == 100
    buf.clear("held")
    await asyncio.wait_for(push, 1)
    assert buf.buffered_ms == 0 and seg.pushed_samples == 1600  # the rest was dropped
