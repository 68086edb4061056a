"""Our local models as livekit-agents plugins, run offline by livekit-agents itself.

The LLM answers inside an ``AgentSession.run(user_input=...)`` (LiveKit's own
test harness: no room, no server); the TTS's frames, the STT's transcript of
a WAV file and the VAD's speech events come from the plugins' public APIs as
an ``AgentSession`` calls them. Everything runs on the real local models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, vad
from livekit.agents.voice.run_result import RunResult

from agent.config import AgentConfig
from agent.livekit_plugins import LLM, STT, TTS, VAD
from agent.runtime import AgentModels
from media.frames import AudioFrame
from media.wav import read_wav, write_wav
from tests.speech import compose, speak
from tests.textnorm import word_error_rate

pytestmark = pytest.mark.slow


async def test_llm_answers_in_an_agent_session(
    models: AgentModels, agent_config: AgentConfig
) -> None:
    plugin = LLM(models.llm, agent_config.llm.generation())
    async with AgentSession(llm=plugin) as session:
        await session.start(Agent(instructions=agent_config.system_prompt))
        result: RunResult[None] = await session.run(user_input="Hello! Who are you?")
        reply = result.expect.next_event().is_message(role="assistant")
        text = reply.event().item.text_content or ""
    assert len(text.split()) >= 2  # a reply of words, whatever they are
    assert plugin.model == models.llm.model


async def test_tts_produces_audio_frames(models: AgentModels) -> None:
    plugin = TTS(models.tts)
    frames = [ev.frame async for ev in plugin.synthesize("Good morning, how can I help?")]
    assert frames and {f.sample_rate for f in frames} == {models.tts.sample_rate}
    pcm = np.concatenate([np.frombuffer(f.data, np.int16) for f in frames])
    seconds = pcm.size / plugin.sample_rate
    assert 0.8 < seconds < 5.0
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # speech, not silence


async def test_stt_transcribes_a_wav(models: AgentModels, tmp_path: Path) -> None:
    question = "what time do you open tomorrow"
    wav = tmp_path / "question.wav"
    write_wav(wav, AudioFrame(speak(question, 48_000), 48_000))  # a browser's rate
    audio = read_wav(wav)
    frame = rtc.AudioFrame(audio.samples.tobytes(), audio.sample_rate, 1, audio.samples.size)
    event = await STT(models.stt).recognize(frame)
    assert word_error_rate(question, event.alternatives[0].text) <= 0.34


async def test_vad_finds_the_start_and_end_of_speech(models: AgentModels) -> None:
    rate = 48_000
    signal = compose(0.6, "please call me back later", 1.2, rate=rate)
    spoken = speak("please call me back later", rate).size / rate
    stream = VAD(models.vad).stream()
    step = rate // 100  # 10 ms frames, as LiveKit delivers them
    for i in range(0, signal.size, step):
        chunk = signal[i : i + step]
        stream.push_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, chunk.size))
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    kinds = [ev.type for ev in events if ev.type != vad.VADEventType.INFERENCE_DONE]
    assert kinds == [vad.VADEventType.START_OF_SPEECH, vad.VADEventType.END_OF_SPEECH]
    end = next(ev for ev in events if ev.type == vad.VADEventType.END_OF_SPEECH)
    kept = sum(f.samples_per_channel for f in end.frames) / end.frames[0].sample_rate
    assert spoken - 0.3 < kept < spoken + 1.2  # the speech, with its prefix and trailing pause
    inferences = [ev for ev in events if ev.type == vad.VADEventType.INFERENCE_DONE]
    assert max(ev.probability for ev in inferences) > 0.8
