"""The Pipecat reference bot as the benchmark's server process.

``PipecatProcess`` is a ``ServerProcess`` whose command is the bot
(``python -m bench.pipecat_ref.bot``) run by the Pipecat virtual
environment's python, with a ``BotSettings`` file derived from the agent
configuration the Parley server is given in the same run
(``bot_settings``). Ready, idle and stop work as for the Parley server: the
bot answers ``/health`` with its ``active_calls``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from bench.pipecat_ref.settings import BotSettings
from bench.wire.server import ServerError, ServerProcess

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = Path("/tmp/parley-pipecat-venv")
INSTALL = "bench/pipecat_ref/install.sh"


def venv_python() -> Path:
    """The Pipecat venv's python (``PARLEY_PIPECAT_VENV``, default /tmp/parley-pipecat-venv)."""
    venv = Path(os.environ.get("PARLEY_PIPECAT_VENV") or DEFAULT_VENV)
    python = venv / "bin" / "python"
    if not python.is_file():
        raise ServerError(f"no Pipecat venv at {venv}: run {INSTALL}")
    return python


def bot_settings(config: AgentConfig, max_calls: int = 4) -> BotSettings:
    """The knobs the bot shares with the Parley agent served from ``config``."""
    llm = config.llm
    return BotSettings(
        system_prompt=config.system_prompt,
        max_tokens=llm.max_tokens,
        temperature=llm.temperature,
        top_p=llm.top_p,
        repeat_penalty=llm.repeat_penalty,
        seed=llm.seed if llm.seed is not None else 0,  # LlamaSettings' default seed
        n_ctx=llm.n_ctx,
        llm_threads=llm.threads,
        stt_threads=config.stt.threads,
        vad_confidence=config.vad.onset_threshold,
        end_of_turn="smart_turn" if config.turn.end_of_turn_model == "smart_turn" else "silence",
        end_of_turn_silence_ms=config.turn.end_of_turn_silence_ms,
        llm_model=str(llm.model_path) if llm.model_path else None,
        stt_model=str(config.stt.model_path) if config.stt.model_path else None,
        tts_voice=str(config.tts.model_path) if config.tts.model_path else None,
        max_calls=max_calls,
    )


MATCHED = (
    "models: SmolLM2-135M-Instruct Q4_1 GGUF (llama.cpp), faster-whisper tiny.en int8, "
    "Piper en_US-joe-medium",
    "system prompt, max_tokens, temperature, top_p, repeat_penalty, seed, n_ctx",
    "LLM and STT threads (llama.cpp n_threads; CTranslate2 through OMP_NUM_THREADS)",
    "Silero VAD speech threshold (Parley's onset threshold)",
    "end-of-turn silence: Silero stop 200 ms + Pipecat user_speech_timeout = "
    "Parley's end_of_turn_silence_ms (or Smart Turn v3 on both sides)",
    "questions, voices, caller (aiortc over loopback) and the audio-only v2v measurement",
)
DIFFERS = (
    "Pipecat runs the LLM in llama-cpp-python's OpenAI-compatible server (a child process, "
    "HTTP + SSE on loopback); Parley calls llama.cpp in-process",
    "Pipecat's Whisper transcribes the whole segment after the VAD stop (faster-whisper "
    "transcribe(), beam 5); Parley transcribes speculatively while the silence runs (beam 1)",
    "Pipecat's TTS speaks whole sentences; Parley's chunker starts at a clause break",
    "Pipecat's Piper uses onnxruntime's default threads (no knob); Parley's uses tts.threads",
    "Pipecat's Smart Turn v3 (when on) uses its own thresholds; Parley's uses turn.smart_turn",
    "Parley's text end-of-turn model (turn.end_of_turn_model: text) has no counterpart in "
    "Pipecat's offline stack: Pipecat waits the silence timer",
    "Parley's system prompt may gain its tools' instructions; Pipecat's bot has no tools",
    "Pipecat loads Whisper and Piper per call (its documented pattern), before the SDP answer",
    "Parley warms its models and the LLM's system-prompt prefix at start-up; Pipecat's first "
    "turn pays the cold inference (compare v2v_later_turns_ms for the warm figure)",
)


class PipecatProcess(ServerProcess):
    """The reference bot on a free loopback port, started and stopped like the Parley server."""

    def __init__(
        self, *, settings: BotSettings, log_path: Path, python: Path | None = None
    ) -> None:
        self.settings = settings
        self.settings_path = log_path.parent / "pipecat-bot.json"
        super().__init__(
            config=None,
            log_path=log_path,
            max_calls=settings.max_calls,
            python=str(python or venv_python()),
            cwd=REPO,
            env={"OMP_NUM_THREADS": str(settings.stt_threads)},
        )

    def command(self) -> list[str]:
        """The bot's command line (its settings file is written here)."""
        self.settings_path.parent.mkdir(parents=True, exist_ok=True)
        self.settings.write(self.settings_path)
        cmd = [self.python, "-m", "bench.pipecat_ref.bot", "--settings", str(self.settings_path)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--llm-log", str(self.log_path.with_suffix(".llm.log"))]
        cmd += ["--log-level", os.environ.get("PARLEY_BENCH_LOG_LEVEL", "warning")]
        return cmd

    def describe(self) -> dict[str, Any]:
        """What the results record about the reference: settings, matched, different."""
        return {
            "settings": self.settings.to_json(),
            "python": self.python,
            "matched": list(MATCHED),
            "differs": list(DIFFERS),
        }
