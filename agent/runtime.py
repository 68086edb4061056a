"""The models of a process: loaded once at start-up, shared by every session."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.llm import LLM
from agent.providers.executor import InferenceExecutor
from agent.stt import STT
from agent.tts import TTS
from agent.vad import VAD, SileroVAD

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AgentModels:
    """VAD, STT, LLM and TTS instances plus the VAD worker thread.

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

    @classmethod
    def load(cls, config: AgentConfig) -> AgentModels:
        """Load the local models the config names (blocking; seconds)."""
        from agent.providers.llama import LlamaLLM, LlamaSettings
        from agent.providers.piper import PiperSettings, PiperTTS
        from agent.providers.whisper import WhisperSettings, WhisperSTT

        timings: dict[str, float] = {}

        def timed(name: str, t0: float) -> None:
            timings[name] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        vad = SileroVAD()
        timed("vad", t0)

        t0 = time.perf_counter()
        stt_kwargs: dict[str, object] = {"cpu_threads": config.stt.threads}
        if config.stt.model_path is not None:
            stt_kwargs["model_path"] = config.stt.model_path
        if config.stt.encoder is not None:
            stt_kwargs["encoder"] = config.stt.encoder
        stt = WhisperSTT(WhisperSettings(**stt_kwargs))  # type: ignore[arg-type]
        timed("stt", t0)

        t0 = time.perf_counter()
        llm = LlamaLLM(
            LlamaSettings(
                model_path=config.llm.model_path, n_ctx=config.llm.n_ctx, threads=config.llm.threads
            )
        )
        timed("llm", t0)

        t0 = time.perf_counter()
        tts = PiperTTS(
            PiperSettings(
                model_path=config.tts.model_path,
                length_scale=config.tts.length_scale,
                threads=config.tts.threads,
            )
        )
        timed("tts", t0)
        log.info("models loaded in %s s", timings)
        return cls(vad=vad, stt=stt, llm=llm, tts=tts, load_seconds=timings)

    async def aclose(self) -> None:
        """Close every provider and stop the VAD worker; never waits for running inference.

        Each provider is closed even when another one fails; the first
        failure is raised after all were tried.
        """
        self.vad_executor.shutdown()
        results = await asyncio.gather(
            self.stt.aclose(), self.llm.aclose(), self.tts.aclose(), return_exceptions=True
        )
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
        for model in (self.stt, self.llm, self.tts):
            close = getattr(model, "close", None)
            if callable(close):
                close()
            else:
                asyncio.run(model.aclose())
