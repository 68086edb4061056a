"""The models of a process: loaded once at start-up, shared by every session.

``AgentModels.load`` builds each stage from its provider chain (the agent
config's ``providers``, overridden by ``PARLEY_STT``/``PARLEY_LLM``/
``PARLEY_TTS``): a chain of only ``local`` is the local model itself; any
other chain is wrapped in the fallback wrapper of ``agent.fallback`` (time
limits, retries, circuit breakers, the next provider within the turn). A
chain naming a cloud provider whose key is not set fails here, at start-up,
with one line. The local voice is always loaded: it speaks the apology when
every provider of a stage failed. With partial transcripts on, the local
Whisper serves them (and is the STT chain's last fallback).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.endofturn import EndOfTurnModel, SmartTurn, TextEndOfTurnModel
from agent.fallback import FallbackLLM, FallbackStats, FallbackSTT, FallbackTTS, fallback_tts
from agent.llm import LLM
from agent.provider_config import LOCAL, CloudCredentials, ProvidersConfig
from agent.providers.executor import InferenceExecutor
from agent.stt import STT
from agent.textturn import TextEndOfTurn
from agent.tts import TTS
from agent.vad import VAD, SileroVAD

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AgentModels:
    """VAD, STT, LLM and TTS instances plus the VAD worker thread (and, when the
    agent uses one, the end-of-turn model with a worker thread of its own).

    Build with ``AgentModels.load(config)`` (local models from the config), or
    pass any implementations of the provider protocols (cloud adapters).
    """

    vad: VAD
    stt: STT
    llm: LLM
    tts: TTS
    vad_executor: InferenceExecutor = field(
        default_factory=lambda: InferenceExecutor("vad", workers=1)
    )
    load_seconds: dict[str, float] = field(default_factory=dict)
    voice: TTS | None = None
    """The local voice, for the apology when every provider of a stage failed
    (None: ``tts`` itself is local)."""
    chains: dict[str, str] = field(default_factory=dict)
    """Each stage's provider chain, e.g. ``{"llm": "groq,local"}`` (recorded with turns)."""
    fallback_stats: FallbackStats | None = None
    """Counters of the fallback wrappers (None: every stage is local only)."""
    end_of_turn: EndOfTurnModel | TextEndOfTurnModel | None = None
    """The end-of-turn model (None: turns end on the silence timer alone)."""
    end_of_turn_executor: InferenceExecutor | None = None
    """Its worker thread (made with the model): an inference never delays VAD windows."""

    def __post_init__(self) -> None:
        if self.end_of_turn is not None and self.end_of_turn_executor is None:
            self.end_of_turn_executor = InferenceExecutor("end-of-turn", workers=1)

    def _close_end_of_turn(self) -> None:
        """Stop the end-of-turn thread; a model with ``close()`` is freed on it, after
        the inference under way (never waited for)."""
        if self.end_of_turn_executor is None:
            return
        close = getattr(self.end_of_turn, "close", None)
        self.end_of_turn_executor.shutdown(finalizer=close if callable(close) else None)

    @property
    def apology_voice(self) -> TTS:
        """The voice of the apology: the local one."""
        return self.voice if self.voice is not None else self.tts

    @classmethod
    def load(cls, config: AgentConfig, env: Mapping[str, str] | None = None) -> AgentModels:
        """Build every stage from its provider chain (blocking: loads local models, seconds).

        ``env`` (default ``os.environ``) gives the chain overrides and the
        cloud keys; ``ConfigError`` when a chain names a provider that cannot
        be used (unknown, no key, SDK not installed).
        """
        source = os.environ if env is None else env
        chains = config.providers.with_environment(source)
        credentials = CloudCredentials.from_env(source)
        credentials.check(chains)
        stt_chain = chains.stt
        if config.stt.partials and LOCAL not in stt_chain:
            stt_chain = (*stt_chain, LOCAL)  # partials come from the local model
        timings: dict[str, float] = {}

        def timed(name: str, t0: float) -> None:
            timings[name] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        vad = SileroVAD()
        timed("vad", t0)
        end_of_turn: EndOfTurnModel | TextEndOfTurnModel | None = None
        if config.turn.end_of_turn_model == "smart_turn":
            t0 = time.perf_counter()
            end_of_turn = SmartTurn(config.turn.smart_turn.model_path)
            timed("end_of_turn", t0)
        elif config.turn.end_of_turn_model == "text":
            t0 = time.perf_counter()
            text_turn = config.turn.text_turn
            end_of_turn = TextEndOfTurn(text_turn.model_path, context_chars=text_turn.context_chars)
            timed("end_of_turn", t0)
        t0 = time.perf_counter()
        local_stt = _local_stt(config) if LOCAL in stt_chain else None
        timed("stt", t0)
        t0 = time.perf_counter()
        local_llm = _local_llm(config) if LOCAL in chains.llm else None
        timed("llm", t0)
        t0 = time.perf_counter()
        local_tts = _local_tts(config)  # always: the apology's voice
        timed("tts", t0)

        from agent.providers import cloud

        stats = FallbackStats()
        limits, policy, breaker = (
            config.fallback.limits(),
            config.fallback.policy(),
            config.fallback.breaker(),
        )
        stts = [
            (n, local_stt if n == LOCAL else cloud.stt(n, config, credentials)) for n in stt_chain
        ]
        llms = [
            (n, local_llm if n == LOCAL else cloud.llm(n, config, credentials)) for n in chains.llm
        ]
        ttss = [
            (n, local_tts if n == LOCAL else cloud.tts(n, config, credentials)) for n in chains.tts
        ]
        stt: STT
        llm: LLM
        tts: TTS
        if stt_chain == (LOCAL,) and local_stt is not None:
            stt = local_stt
        else:
            stt = FallbackSTT(
                [(n, p) for n, p in stts if p is not None],
                limits,
                policy,
                partials_from=LOCAL if LOCAL in stt_chain else None,
                breaker=breaker,
                stats=stats,
            )
        if chains.llm == (LOCAL,) and local_llm is not None:
            llm = local_llm
        else:
            llm = FallbackLLM(
                [(n, p) for n, p in llms if p is not None],
                limits,
                policy,
                breaker=breaker,
                stats=stats,
            )
        tts_entries = [(n, p) for n, p in ttss if p is not None]
        if chains.tts == (LOCAL,):
            tts = local_tts
        elif config.cloud.elevenlabs.input_streaming:
            tts = fallback_tts(
                tts_entries,
                limits,
                policy,
                chunker=config.chunker.to_settings(),
                breaker=breaker,
                stats=stats,
            )
        else:
            tts = FallbackTTS(tts_entries, limits, policy, breaker=breaker, stats=stats)
        cloudy = chains.cloud() or stt_chain != (LOCAL,)
        log.info("models loaded in %s s; chains %s", timings, _describe(chains, stt_chain))
        return cls(
            vad=vad,
            stt=stt,
            llm=llm,
            tts=tts,
            load_seconds=timings,
            voice=None if tts is local_tts else local_tts,
            chains=_describe(chains, stt_chain),
            fallback_stats=stats if cloudy else None,
            end_of_turn=end_of_turn,
        )

    async def aclose(self) -> None:
        """Close every provider (and the local voice) and stop the VAD worker; never waits
        for running inference.

        Each provider is closed even when another one fails; the first
        failure is raised after all were tried.
        """
        self.vad_executor.shutdown()
        self._close_end_of_turn()
        closing = [self.stt.aclose(), self.llm.aclose(), self.tts.aclose()]
        if self.voice is not None:
            closing.append(self.voice.aclose())
        results = await asyncio.gather(*closing, return_exceptions=True)
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def close(self) -> None:
        """Synchronous ``aclose()`` for callers without an event loop (CLI tools, fixtures).

        Providers with a sync ``close()`` (the local ones) are closed directly;
        others are closed on a private event loop, so this must not be called
        from a running loop when cloud providers are configured.
        """
        self.vad_executor.shutdown()
        self._close_end_of_turn()
        models: list[STT | LLM | TTS] = [self.stt, self.llm, self.tts]
        if self.voice is not None:
            models.append(self.voice)
        for model in models:
            close = getattr(model, "close", None)
            if callable(close):
                close()
            else:
                asyncio.run(model.aclose())


def _describe(chains: ProvidersConfig, stt_chain: tuple[str, ...]) -> dict[str, str]:
    return {"stt": ",".join(stt_chain), "llm": ",".join(chains.llm), "tts": ",".join(chains.tts)}


def _local_stt(config: AgentConfig) -> STT:
    from agent.providers.whisper import WhisperSettings, WhisperSTT

    kwargs: dict[str, object] = {"cpu_threads": config.stt.threads}
    if config.stt.model_path is not None:
        kwargs["model_path"] = config.stt.model_path
    if config.stt.encoder is not None:
        kwargs["encoder"] = config.stt.encoder
    return WhisperSTT(WhisperSettings(**kwargs))  # type: ignore[arg-type]


def _local_llm(config: AgentConfig) -> LLM:
    from agent.providers.llama import LlamaLLM, LlamaSettings

    return LlamaLLM(
        LlamaSettings(
            model_path=config.llm.model_path,
            n_ctx=config.llm.n_ctx,
            threads=config.llm.threads,
            tool_format=config.llm.tool_format,
        )
    )


def _local_tts(config: AgentConfig) -> TTS:
    from agent.providers.piper import PiperSettings, PiperTTS

    return PiperTTS(
        PiperSettings(
            model_path=config.tts.model_path,
            length_scale=config.tts.length_scale,
            threads=config.tts.threads,
        )
    )
