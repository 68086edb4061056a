"""Cloud providers built from the agent config and the environment's keys.

The SDKs are an optional extra (``scripts/setup.sh cloud``): a chain that
names a cloud provider whose SDK is missing fails at start-up with one line
saying how to install it.

The SDKs and their HTTP clients log whole requests at DEBUG (``groq`` and
``openai`` print the JSON body: the prompt and the history; ``httpcore`` the
headers). Whatever level the application runs at, those loggers are held at
WARNING once a cloud provider is built: prompts, transcripts and keys never
reach a log line.
"""

from __future__ import annotations

import logging

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.llm import LLM
from agent.provider_config import CloudCredentials
from agent.stt import STT
from agent.tts import TTS

_INSTALL = "install the cloud extra: scripts/setup.sh cloud (or pip install 'parley[cloud]')"
VENDOR_LOGGERS = ("groq", "openai", "elevenlabs", "httpx", "httpcore", "websockets")
"""Loggers that would write requests (bodies, headers) at DEBUG or INFO."""


def quiet_vendor_loggers() -> None:
    """Hold the SDKs' and HTTP clients' loggers at WARNING (idempotent)."""
    for name in VENDOR_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def llm(name: str, config: AgentConfig, credentials: CloudCredentials) -> LLM:
    """The ``groq`` or ``openai`` chat-completions LLM."""
    quiet_vendor_loggers()
    try:
        if name == "groq":
            from agent.providers.groq_llm import GROQ_BASE_URL, GroqLLM, GroqSettings

            groq = config.cloud.groq
            return GroqLLM(
                GroqSettings(
                    api_key=credentials.key("groq"),
                    model=groq.llm_model,
                    base_url=credentials.base_urls.get("groq", GROQ_BASE_URL),
                    timeout_s=groq.timeout_s,
                )
            )
        if name == "openai":
            from agent.providers.openai_llm import OpenAICompatibleLLM, OpenAISettings

            openai = config.cloud.openai
            return OpenAICompatibleLLM(
                OpenAISettings(
                    api_key=credentials.key("openai"),
                    model=openai.model,
                    base_url=credentials.base_urls.get("openai", "https://api.openai.com/v1"),
                    timeout_s=openai.timeout_s,
                    max_tokens_param=openai.max_tokens_param,
                )
            )
    except ImportError as exc:
        raise ConfigError(f"the LLM chain names {name} but its SDK is missing: {_INSTALL}") from exc
    raise ConfigError(f"no cloud LLM named {name!r}")


def stt(name: str, config: AgentConfig, credentials: CloudCredentials) -> STT:
    """Groq's Whisper (finals only: partials come from the local model)."""
    quiet_vendor_loggers()
    if name != "groq":
        raise ConfigError(f"no cloud STT named {name!r}")
    try:
        from agent.providers.groq_llm import GROQ_BASE_URL
        from agent.providers.groq_stt import GroqSTTSettings, GroqWhisperSTT
    except ImportError as exc:
        raise ConfigError(f"the STT chain names groq but its SDK is missing: {_INSTALL}") from exc
    groq = config.cloud.groq
    return GroqWhisperSTT(
        GroqSTTSettings(
            api_key=credentials.key("groq"),
            model=groq.stt_model,
            base_url=credentials.base_urls.get("groq", GROQ_BASE_URL),
            timeout_s=groq.timeout_s,
            language=groq.stt_language,
            prompt=groq.stt_prompt,
        )
    )


def tts(name: str, config: AgentConfig, credentials: CloudCredentials) -> TTS:
    """ElevenLabs (HTTP streaming and the input-streaming WebSocket)."""
    quiet_vendor_loggers()
    if name != "elevenlabs":
        raise ConfigError(f"no cloud TTS named {name!r}")
    try:
        from agent.providers.elevenlabs import (
            ELEVENLABS_BASE_URL,
            ElevenLabsSettings,
            ElevenLabsTTS,
        )
    except ImportError as exc:
        raise ConfigError(
            f"the TTS chain names elevenlabs but its SDK is missing: {_INSTALL}"
        ) from exc
    el = config.cloud.elevenlabs
    settings = ElevenLabsSettings(
        api_key=credentials.key("elevenlabs"),
        voice_id=el.voice_id,
        model_id=el.model_id,
        output_format=el.output_format,
        timeout_s=el.timeout_s,
        base_url=credentials.base_urls.get("elevenlabs", ELEVENLABS_BASE_URL),
    )
    return ElevenLabsTTS(settings)
