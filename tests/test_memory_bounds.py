"""Defect 4 of issue 14: memory that grew with what callers sent, and stayed.

A fuzzing run took the server from 568 MB to 1.7 GB (and a longer one of
``bench.memory`` past 16 GB): Piper synthesized each sentence in one ONNX
inference whose memory grows with its phoneme count, and onnxruntime's arena
kept the peak. These tests check the bounds structurally, never by timing or
by reading RSS: every inference gets at most ``max_phonemes`` phonemes
whatever the text, the arena is shrunk after each run, and the per-session
state of text chats stays under its cap however many sessions come. The RSS
curve itself is ``python -m bench.memory``'s.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.providers.piper import PiperSettings, PiperTTS, _ShrinkingSession, split_phonemes
from bench.fuzz import garbage_text, prose
from signaling import allocator
from signaling.textchat import TextChats
from store.settings import StoreSettings
from store.store import Store
from tests.fakes import ScriptedLLM, fake_models


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTTS]:
    tts = PiperTTS(PiperSettings(max_phonemes=64))
    yield tts
    tts.close()


@pytest.mark.parametrize(
    ("phonemes", "limit", "pieces"),
    [
        (list("ab cd ef"), 5, [list("ab cd"), list("ef")]),  # cut at the last space that fits
        (list("abcdefgh"), 3, [list("abc"), list("def"), list("gh")]),  # one long word: hard cuts
        (list("ab"), 5, [list("ab")]),
        (list("ab "), 2, [list("ab")]),
        ([], 4, []),
    ],
)
def test_split_phonemes(phonemes: list[str], limit: int, pieces: list[list[str]]) -> None:
    assert split_phonemes(phonemes, limit) == pieces


def test_split_phonemes_keeps_every_word_and_the_bound() -> None:
    rng = random.Random(4)
    words = [
        "".join(rng.choice("abcdefgh") for _ in range(rng.randrange(1, 12))) for _ in range(400)
    ]
    phonemes = list(" ".join(words))
    pieces = split_phonemes(phonemes, 40)
    assert all(0 < len(piece) <= 40 for piece in pieces)
    assert " ".join("".join(piece) for piece in pieces).split() == words


@pytest.mark.parametrize(
    "text",
    [
        prose(random.Random(1), 2000, punctuated=False),  # one 2,000-character sentence
        garbage_text(random.Random(2), 1500),  # ~7,900 phonemes before the bound
        " ".join(str(random.Random(3).randrange(10**9)) for _ in range(150)),  # spelled out
    ],
    ids=["unpunctuated", "random-code-points", "numbers"],
)
def test_no_inference_gets_more_than_max_phonemes(piper: PiperTTS, text: str) -> None:
    pieces = piper._phonemize(text)
    assert len(pieces) > 1  # the text really was over the bound
    assert max(len(p) for p in pieces) <= piper.settings.max_phonemes


async def test_a_long_sentence_is_spoken_in_bounded_pieces(piper: PiperTTS) -> None:
    text = prose(random.Random(5), 300, punctuated=False)
    chunks = [chunk async for chunk in piper.stream(text)]
    assert len(chunks) == len(piper._phonemize(text)) > 1
    # 64 phonemes are a few seconds of speech: no piece can be a long inference
    assert max(c.pcm.size for c in chunks) < 8 * piper.sample_rate
    assert isinstance(piper._voice.session, _ShrinkingSession)  # the arena is given back


async def test_text_chat_state_stays_under_its_cap(tmp_path: Path) -> None:
    store = await Store.open(
        StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None)
    )
    try:
        config = AgentConfig.load()
        chats = TextChats(config, fake_models(llm=ScriptedLLM(["ok"])), store, max_locks=16)
        for _ in range(100):
            await chats.reply("hello")  # a new session each time
        assert len(chats._locks) <= chats.max_locks
    finally:
        await store.close()


def test_the_allocator_trim_is_counted() -> None:
    if not allocator.available():
        pytest.skip("no malloc_trim in this C library")
    before = allocator.STATS.trims
    allocator.trim()
    assert allocator.STATS.trims == before + 1
    assert allocator.STATS.last_ms is not None
