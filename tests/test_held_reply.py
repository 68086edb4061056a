"""A held (preemptive) reply synthesizes only a head start until its turn is confirmed.

A real ``Reply`` speaks a long canned answer with the real Piper voice into a
real ``PlayoutBuffer``; the voice is wrapped only to count what it
synthesized and when. Held, the reply stops at the buffer's held bound
(``max_held_ms``, 2 s by default) instead of synthesizing the whole answer
on a guess; released, it goes on and the whole answer is heard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator

import pytest

from agent.providers.piper import PiperTTS
from agent.reply import Reply
from agent.tts import SpeechChunk
from media.playout import HELD_MS, PlayoutBuffer, heard_text
from tests.fakes import canned_reply
from tests.textnorm import normalize

pytestmark = pytest.mark.slow

ANSWER = (
    "Paris is the capital of France. It lies on the river Seine in the north of the country. "
    "About two million people live in the city itself. The wider region is home to more "
    "than twelve million. It is known for its museums, its cafes and its long history."
)
"""About ten seconds of speech: far more than the held bound."""


class CountingVoice:
    """The real Piper voice, counting the seconds it synthesized."""

    def __init__(self, voice: PiperTTS) -> None:
        self._voice = voice
        self.sample_rate = voice.sample_rate
        self.voice = voice.voice
        self.seconds = 0.0
        self.last_at = time.monotonic()

    async def stream(self, text: str) -> AsyncGenerator[SpeechChunk, None]:
        async for chunk in self._voice.stream(text):
            self.seconds += chunk.duration
            self.last_at = time.monotonic()
            yield chunk

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTTS]:
    voice = PiperTTS()
    yield voice
    voice.close()


def held_reply(playout: PlayoutBuffer, voice: CountingVoice) -> Reply:
    return canned_reply(playout, voice, ANSWER, "turn_held", held=True)


async def stalled(voice: CountingVoice, quiet_s: float = 0.6, timeout_s: float = 30.0) -> None:
    """Wait until the voice has synthesized nothing for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() - voice.last_at < quiet_s or voice.seconds == 0:
        assert time.monotonic() < deadline, "the voice never stopped"
        await asyncio.sleep(0.05)


async def synthesized_while_held(piper: PiperTTS, playout: PlayoutBuffer) -> float:
    """Seconds of the answer synthesized while held (the reply is then dropped)."""
    voice = CountingVoice(piper)
    reply = held_reply(playout, voice)
    task = asyncio.create_task(reply.run())
    reply.handle.task = task
    try:
        await stalled(voice)
        return voice.seconds
    finally:
        reply.handle.interrupt()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_held_reply_stops_at_the_bound_until_released_then_goes_on(
    piper: PiperTTS,
) -> None:
    # without a small bound (the playout's 20 s), a held reply synthesizes it all on a guess
    unbounded = await synthesized_while_held(piper, PlayoutBuffer(16000, max_held_ms=20_000))
    assert unbounded > 8.0

    playout = PlayoutBuffer(16000)
    voice = CountingVoice(piper)
    reply = held_reply(playout, voice)
    task = asyncio.create_task(reply.run())
    reply.handle.task = task
    await stalled(voice)
    held_s = voice.seconds
    # it filled its bound and stopped: at most one more sentence waits in the producer
    assert playout.buffered_ms == pytest.approx(HELD_MS, abs=50)
    assert HELD_MS / 1000 <= held_s < HELD_MS / 1000 + 4.0
    assert held_s < unbounded / 2
    assert not any(s.played_samples for s in playout.segments(reply.handle.id))

    playout.release(reply.handle.id)
    deadline = time.monotonic() + 60
    while not task.done():
        assert time.monotonic() < deadline, "the released reply never ended"
        playout.pull()
        await asyncio.sleep(0.001)
    await task
    assert voice.seconds == pytest.approx(unbounded, rel=0.02)
    assert normalize(heard_text(playout.segments(reply.handle.id))) == normalize(ANSWER)
