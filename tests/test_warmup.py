"""Start-up warm-up: every local stage runs once; cloud chains are never called."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, Sequence

import pytest

from agent.config import AgentConfig
from agent.llm import ChatMessage, GenerationSettings, LLMDelta, TextDelta, ToolSpec
from agent.runtime import AgentModels
from agent.warmup import warm_up

pytestmark = pytest.mark.slow


class _CountingLLM:
    """An LLM that records the requests it gets (standing in for a cloud chain)."""

    model = "counting"

    def __init__(self) -> None:
        self.requests: list[Sequence[ChatMessage]] = []

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        self.requests.append(messages)
        yield TextDelta("hi")

    async def aclose(self) -> None:
        return None


async def test_every_local_stage_runs_once_and_the_prompt_is_cached(
    models: AgentModels, agent_config: AgentConfig
) -> None:
    timings = await warm_up(models, agent_config)
    with_model = {"end_of_turn"} if models.end_of_turn is not None else set()
    assert set(timings) == {"tts", "vad", "stt", "llm"} | with_model
    assert all(seconds > 0 for seconds in timings.values())
    # the system prompt is now in llama.cpp's prefix cache: a first token on it comes
    # faster than the warm-up's own (which evaluated the prompt from scratch)
    messages = [ChatMessage("system", agent_config.system_prompt), ChatMessage("user", "Hi!")]
    t0 = time.perf_counter()
    async for _ in models.llm.stream(messages, GenerationSettings(max_tokens=1, temperature=0)):
        break
    assert time.perf_counter() - t0 < timings["llm"]


async def test_a_cloud_chain_is_never_called(
    models: AgentModels, agent_config: AgentConfig
) -> None:
    cloud = _CountingLLM()
    mixed = dataclasses.replace(models, llm=cloud, chains={**models.chains, "llm": "groq,local"})
    timings = await warm_up(mixed, agent_config)
    assert "llm" not in timings
    assert cloud.requests == []
    assert {"tts", "vad", "stt"} <= set(timings)
