"""Provider chains from configuration, the start-up checks, and a session on cloud providers.

The cloud providers are the official SDKs pointed (``*_BASE_URL``) at the
loopback servers of ``tests.vendors``, which speak Groq's and ElevenLabs'
documented HTTP, SSE and WebSocket protocols. The local models are real.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.events import AgentEvent, ErrorEvent, MetricsEvent, ReplyEvent
from agent.fallback import (
    AllProvidersFailedError,
    FailureKind,
    FallbackLLM,
    FallbackSTT,
    ProviderFailure,
    StreamingFallbackTTS,
)
from agent.provider_config import CloudCredentials, ProvidersConfig
from agent.runtime import AgentModels
from agent.session import VoiceSession
from tests.fakes import FakeTTS, ScriptedLLM, fake_models, feed, silence
from tests.vendors.elevenlabs_api import ElevenLabsAPI
from tests.vendors.openai_api import CHAT, ChatReply, HttpFault, OpenAIAPIServer

GROQ_KEY = "gsk_loopback_secret_0123456789"
ELEVEN_KEY = "xi_loopback_secret_9876543210"


# ------------------------------------------------------------------ configuration


def test_chains_are_validated() -> None:
    assert ProvidersConfig(llm=("Groq", "local")).llm == ("groq", "local")
    with pytest.raises(ValueError, match="unknown provider 'elevenlabs'"):
        ProvidersConfig(llm=("elevenlabs",))
    with pytest.raises(ValueError, match="twice"):
        ProvidersConfig(tts=("local", "local"))
    with pytest.raises(ValueError, match="names no provider"):
        ProvidersConfig(stt=())


def test_environment_overrides_the_chains() -> None:
    chains = ProvidersConfig().with_environment({"PARLEY_LLM": "groq, local", "PARLEY_TTS": ""})
    assert chains.llm == ("groq", "local") and chains.tts == ("local",)
    assert chains.cloud() == {"groq"}
    with pytest.raises(ConfigError, match="PARLEY_STT: stt: unknown provider 'openai'"):
        ProvidersConfig().with_environment({"PARLEY_STT": "openai"})


def test_a_chain_naming_a_cloud_provider_without_its_key_fails_in_one_line() -> None:
    chains = ProvidersConfig(llm=("groq", "local"), tts=("elevenlabs",))
    credentials = CloudCredentials.from_env({"GROQ_API_KEY": GROQ_KEY})
    with pytest.raises(ConfigError) as info:
        credentials.check(chains)
    message = str(info.value)
    assert message == "the provider chain names elevenlabs but ELEVENLABS_API_KEY is not set"
    assert "\n" not in message
    assert GROQ_KEY not in repr(credentials)  # which keys are set, never their values
    assert "groq" in repr(credentials)


def test_the_agent_yaml_takes_chains_cloud_settings_and_fallback_knobs(tmp_path: object) -> None:
    config = AgentConfig.model_validate(
        {
            "providers": {"llm": ["openai", "local"], "tts": ["elevenlabs", "local"]},
            "cloud": {"openai": {"model": "qwen2.5:7b", "max_tokens_param": "max_tokens"}},
            "fallback": {"llm_first_token_s": 1.5, "breaker_failures": 2},
        }
    )
    assert config.providers.llm == ("openai", "local")
    assert config.cloud.openai.model == "qwen2.5:7b"
    assert config.fallback.limits().llm_first_token_s == 1.5
    assert config.fallback.breaker().failure_threshold == 2
    with pytest.raises(ValueError, match="extra"):
        AgentConfig.model_validate({"cloud": {"groq": {"api_key": "in-the-yaml"}}})


# ------------------------------------------------------------------ the apology


class Recorder:
    def __init__(self) -> None:
        self.events: list[AgentEvent] = []

    def __call__(self, event: AgentEvent) -> None:
        self.events.append(event)

    def replies(self) -> list[ReplyEvent]:
        return [e for e in self.events if isinstance(e, ReplyEvent)]


def _all_failed() -> AllProvidersFailedError:
    return AllProvidersFailedError(
        "llm",
        (
            ProviderFailure("groq", FailureKind.UNAVAILABLE, 2, "ProviderError"),
            ProviderFailure("local", FailureKind.ERROR, 1, "ProviderError"),
        ),
    )


async def test_when_every_llm_fails_the_local_voice_apologizes_and_listening_goes_on() -> None:
    llm = ScriptedLLM(["Sure, here it is.", "Paris."])
    llm.fail_next(at_token=0, error=_all_failed())
    cloud_voice, local_voice = FakeTTS(), FakeTTS()
    models = fake_models(llm=llm, tts=cloud_voice)
    models.voice = local_voice
    rec = Recorder()
    config = AgentConfig.load().model_copy(update={"greeting": None})
    async with VoiceSession(config, models, sinks=[rec]) as session:
        await session.send_text("What is the capital of France?")
        await feed(session, silence(5.0))  # the apology is played out
        await session.send_text("And of Italy?")
        await feed(session, silence(2.0))
    errors = [e for e in rec.events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].stage == "reply" and not errors[0].retryable
    failed, apology, answer = rec.replies()
    assert failed.heard_text == "" and failed.interrupted
    assert apology.text == config.fallback.apology and not apology.interrupted
    assert config.fallback.apology in " ".join(local_voice.texts)
    assert not any("trouble" in t for t in cloud_voice.texts)
    assert answer.text == "Paris."  # the session kept listening and answers the next turn


# ------------------------------------------------------------------ a cloud session


@pytest.fixture
async def vendors() -> AsyncIterator[tuple[OpenAIAPIServer, ElevenLabsAPI]]:
    async with (
        OpenAIAPIServer(api_key=GROQ_KEY) as groq,
        ElevenLabsAPI(api_key=ELEVEN_KEY) as eleven,
    ):
        yield groq, eleven


def _env(groq: OpenAIAPIServer, eleven: ElevenLabsAPI) -> dict[str, str]:
    return {
        "PARLEY_STT": "groq,local",
        "PARLEY_LLM": "groq,local",
        "PARLEY_TTS": "elevenlabs,local",
        "GROQ_API_KEY": GROQ_KEY,
        "GROQ_BASE_URL": groq.groq_base_url,
        "ELEVENLABS_API_KEY": ELEVEN_KEY,
        "ELEVENLABS_BASE_URL": eleven.base_url,
    }


@pytest.mark.slow
async def test_a_session_on_groq_and_elevenlabs_falls_back_to_local_and_logs_no_secret(
    agent_config: AgentConfig,
    vendors: tuple[OpenAIAPIServer, ElevenLabsAPI],
    caplog: pytest.LogCaptureFixture,
) -> None:
    groq, eleven = vendors
    caplog.set_level(logging.DEBUG)
    models = AgentModels.load(agent_config, _env(groq, eleven))
    assert isinstance(models.llm, FallbackLLM) and isinstance(models.stt, FallbackSTT)
    assert isinstance(models.tts, StreamingFallbackTTS)
    assert models.chains == {"stt": "groq,local", "llm": "groq,local", "tts": "elevenlabs,local"}
    question = "What is the capital of France?"
    groq.queue_chat(
        ChatReply("The capital of France is Paris."),
        ChatReply(fault=HttpFault(500)),  # Groq fails the second turn, retried ...
        ChatReply(fault=HttpFault(500)),  # ... and fails again: the local model answers
    )
    rec = Recorder()
    config = agent_config.model_copy(update={"greeting": None})
    try:
        async with VoiceSession(config, models, sinks=[rec]) as session:
            await session.send_text(question)
            await feed(session, silence(4.0))
            await session.send_text("And what about Italy?")
            await feed(session, silence(6.0))
    finally:
        await models.aclose()
    first, second = rec.replies()
    assert first.text == "The capital of France is Paris." and not first.interrupted
    assert second.text and not second.interrupted  # served by the local model
    metrics = [e for e in rec.events if isinstance(e, MetricsEvent)]
    cloud, local = metrics[0].usage, metrics[1].usage
    assert (cloud["llm_provider"], cloud["tts_provider"]) == ("groq", "elevenlabs")
    assert cloud["completion_tokens"] > 0 and cloud["tts_chars"] >= len(first.text)
    assert cloud["chains"]["llm"] == "groq,local"
    assert local["llm_provider"] == "local"
    # the vendor's voice spoke the first reply: its socket got the LLM's text
    spoken = " ".join(r.text for r in eleven.requests if r.kind == "stream-input")
    assert "Paris" in spoken
    # the prompt went to Groq as chat messages
    sent = groq.recorded(CHAT)[0].json
    assert sent["messages"][-1]["content"] == question
    # no key, prompt or reply text in any log line
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (GROQ_KEY, ELEVEN_KEY, question, "Paris"):
        assert secret not in logged
