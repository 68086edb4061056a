"""The Pipecat reference line of the wire benchmark (bench/pipecat_ref).

The settings the bot is given, Parley's ratio to it, and (where the Pipecat
venv is installed: bench/pipecat_ref/install.sh) the real bot called by the
benchmark's own caller over loopback WebRTC: the v2v scenario answered from
the audio alone, bad offers refused with 4xx, no transcript in its logs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import AgentConfig
from bench.pipecat_ref.caller import PipecatCaller
from bench.pipecat_ref.process import PipecatProcess, bot_settings, venv_python
from bench.pipecat_ref.settings import VAD_STOP_S, BotSettings, SettingsError
from bench.wire.scenarios import pipecat
from bench.wire.scenarios.common import BenchContext
from bench.wire.server import Monitor, ServerError
from bench.wire.speech import PIPER_VOICE, QUESTIONS
from media.caller import CallerPeer


def test_bot_settings_follow_the_served_agent(tmp_path: Path) -> None:
    config = AgentConfig.load()
    s = bot_settings(config)
    assert s.system_prompt == config.system_prompt
    assert (s.max_tokens, s.temperature, s.top_p) == (
        config.llm.max_tokens,
        config.llm.temperature,
        config.llm.top_p,
    )
    assert s.repeat_penalty == config.llm.repeat_penalty
    assert (s.llm_threads, s.stt_threads, s.n_ctx) == (
        config.llm.threads,
        config.stt.threads,
        config.llm.n_ctx,
    )
    assert s.vad_confidence == config.vad.onset_threshold
    # the VAD's stop and Pipecat's speech timeout add up to Parley's end-of-turn silence
    silence_s = config.turn.end_of_turn_silence_ms / 1000
    assert s.user_speech_timeout_s + VAD_STOP_S == pytest.approx(silence_s)
    assert s.end_of_turn == (
        "smart_turn" if config.turn.end_of_turn_model == "smart_turn" else "silence"
    )
    assert (s.llm_model, s.stt_model, s.tts_voice) == (None, None, None)  # packaged models
    assert BotSettings.read(s.write(tmp_path / "bot.json")) == s


def test_bot_settings_follow_overrides() -> None:
    base = AgentConfig.load()
    turn = base.turn.model_copy(
        update={"end_of_turn_silence_ms": 900, "end_of_turn_model": "smart_turn"}
    )
    s = bot_settings(base.model_copy(update={"turn": turn}))
    assert s.end_of_turn == "smart_turn"
    assert s.user_speech_timeout_s == pytest.approx(0.9 - VAD_STOP_S)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "JSON object"),
        ('{"system_prompt": "x"}', "missing"),
        ("UNKNOWN", "unknown keys"),
        ("ZERO_TOKENS", "max_tokens"),
        ("SHORT_SILENCE", "end_of_turn_silence_ms"),
    ],
)
def test_settings_file_rejects_bad_input(tmp_path: Path, content: str, error: str) -> None:
    good = bot_settings(AgentConfig.load()).to_json()
    variants = {
        "UNKNOWN": {**good, "api_key": "x"},
        "ZERO_TOKENS": {**good, "max_tokens": 0},
        "SHORT_SILENCE": {**good, "end_of_turn_silence_ms": 150},
    }
    path = tmp_path / "bot.json"
    path.write_text(json.dumps(variants[content]) if content in variants else content)
    with pytest.raises(SettingsError, match=error):
        BotSettings.read(path)


def _turns(values: list[float | None], per_call: int = 2) -> dict[str, Any]:
    return {"turns": [{"v2v_ms": v, "index": i % per_call} for i, v in enumerate(values)]}


def test_ratio_compares_the_questions_both_answered() -> None:
    parley = _turns([1000.0, None, 1200.0, 800.0])
    reference = _turns([2000.0, 2500.0, None, 1600.0, 3000.0])
    r = pipecat.ratio(parley, reference)
    assert r is not None
    # pairs (1000, 2000) and (800, 1600): questions 0 and 3
    assert r["turns"] == 2
    assert r["median"] == pytest.approx(0.5)
    assert r["parley_median_ms"] == pytest.approx(900.0)
    assert r["pipecat_median_ms"] == pytest.approx(1800.0)
    assert r["later_median"] == pytest.approx(0.5)  # question 3 is its call's second turn


def test_ratio_needs_both_runs() -> None:
    assert pipecat.ratio(None, _turns([1.0])) is None
    assert pipecat.ratio({"error": "timed out"}, _turns([1.0])) is None
    assert pipecat.ratio(_turns([None]), _turns([1.0])) is None


def _pipecat_python() -> Path:
    try:
        return venv_python()
    except ServerError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PipecatProcess]:
    python = _pipecat_python()
    work = tmp_path_factory.mktemp("pipecat")
    process = PipecatProcess(
        settings=bot_settings(AgentConfig.load(), max_calls=1),
        log_path=work / "bot.log",
        python=python,
    )
    await process.start()
    try:
        yield process
    finally:
        assert await process.stop() == 0


@pytest.mark.slow
async def test_v2v_scenario_against_the_pipecat_bot(bot: PipecatProcess) -> None:
    config = AgentConfig.load()
    async with (
        httpx.AsyncClient(base_url=bot.base_url, timeout=30) as client,
        Monitor(bot.pid) as monitor,
    ):
        ctx = BenchContext(bot, client, monitor, config, [PIPER_VOICE], quick=True)
        out = await pipecat.run(ctx, bot, calls=1, turns_per_call=2)
        assert await bot.wait_idle(client)
        health = (await client.get("/health")).json()
    assert health["active_calls"] == 0
    assert out["unanswered"] == 0
    turns = out["turns"]
    assert [t["question"] for t in turns] == list(QUESTIONS[:2])
    for t in turns:
        assert t["error"] is None
        assert t["completed"]
        assert t["v2v_ms"] > 0  # the agent spoke only after the question ended
        assert t["reply_audio_s"] > 0.3  # a spoken reply, heard to its end
        assert t["server"] is None and t["stages"] is None  # no events from Pipecat
    assert out["reference"]["settings"]["system_prompt"] == config.system_prompt
    # transcripts and replies never reach the logs
    logs = bot.log_path.read_text() + bot.log_path.with_suffix(".llm.log").read_text()
    for question in QUESTIONS[:2]:
        assert question.rstrip("?").lower() not in logs.lower()
    assert config.system_prompt[:40] not in logs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": "offer"}, 422),  # no SDP
        ({"sdp": "v=0", "type": "answer"}, 422),  # not an offer
        ({"sdp": "x" * 70_000, "type": "offer"}, 422),  # oversized
        ({"sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n", "type": "offer"}, 400),  # no media
        ({"sdp": "v=0", "type": "offer", "pc_id": "nobody"}, 404),  # unknown call
    ],
)
async def test_bad_offers_are_refused(
    bot: PipecatProcess, body: dict[str, Any], status: int
) -> None:
    async with httpx.AsyncClient(base_url=bot.base_url, timeout=30) as client:
        r = await client.post("/api/offer", json=body)
        assert r.status_code == status, r.text
        assert (await client.get("/health")).json()["active_calls"] == 0


@pytest.mark.slow
async def test_a_call_over_the_limit_is_refused(bot: PipecatProcess) -> None:
    async with httpx.AsyncClient(base_url=bot.base_url, timeout=30) as client:
        first = PipecatCaller(client, "first")
        extra = CallerPeer()
        try:
            await first.connect()
            r = await client.post("/api/offer", json={"sdp": await extra.offer(), "type": "offer"})
            assert r.status_code == 503, r.text
            assert "busy" in r.json()["detail"]
        finally:
            await extra.close()
            await first.hang_up()
        assert await bot.wait_idle(client)
