"""Our providers as livekit-agents plugins, for teams that run their own ``AgentSession``.

``VAD``, ``STT``, ``LLM`` and ``TTS`` subclass livekit-agents' plugin bases
(``livekit.agents.vad.VAD``, ``stt.STT``, ``llm.LLM``, ``tts.TTS``) and run on
the project's provider protocols, so the offline stack (Silero VAD on
onnxruntime, faster-whisper with the short encoder, llama.cpp with
SmolLM2, Piper) and the cloud adapters behind the same protocols plug into
any LiveKit agent::

    from livekit.agents import Agent, AgentSession
    from agent.config import AgentConfig
    from agent.livekit_plugins import LLM, STT, TTS, VAD
    from agent.runtime import AgentModels

    config = AgentConfig.load()
    models = AgentModels.load(config)  # once per process
    session = AgentSession(
        vad=VAD(models.vad), stt=STT(models.stt), llm=LLM(models.llm, config.llm.generation()),
        tts=TTS(models.tts),
    )

Why here: livekit-agents is a third-party framework, not a transport, and
these classes adapt the agent's own providers to it. Only this subpackage
imports it, and nothing else in ``agent`` imports this subpackage, so the
agent core runs (and installs) without LiveKit.
"""

from agent.livekit_plugins.llm import LLM
from agent.livekit_plugins.stt import STT
from agent.livekit_plugins.tts import TTS
from agent.livekit_plugins.vad import VAD

__all__ = ["LLM", "STT", "TTS", "VAD"]
