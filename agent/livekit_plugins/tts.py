"""Our TTS (Piper locally, or any ``agent.tts.TTS``) as a livekit-agents TTS plugin.

Chunked synthesis (``synthesize``): each chunk our provider streams is pushed
as raw PCM at the plugin's rate as soon as it is synthesized (a chunk at
another rate, from a fallback voice, is resampled). ``AgentSession`` feeds a
non-streaming TTS sentence by sentence (``tts.StreamAdapter``).
"""

from __future__ import annotations

import secrets
from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts

from agent.errors import ProviderError
from agent.livekit_plugins.errors import to_api_error
from agent.tts import TTS as ParleyTTS  # noqa: N811 (ours, beside LiveKit's)
from media.resample import resample


class TTS(tts.TTS[Any]):
    """Synthesizes with ``provider`` at its native rate (shared by every session)."""

    def __init__(self, provider: ParleyTTS) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=provider.sample_rate,
            num_channels=1,
        )
        self._provider = provider

    @property
    def model(self) -> str:
        """The provider's voice."""
        return self._provider.voice

    @property
    def provider(self) -> str:
        """Always ``parley``: the models are ours."""
        return "parley"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        """Synthesize ``text`` (one sentence or clause, as ``AgentSession`` sends it)."""
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class ChunkedStream(tts.ChunkedStream):
    """One synthesis: our provider's chunks as they come."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._plugin = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        rate = self._plugin.sample_rate
        output_emitter.initialize(
            request_id="tts_" + secrets.token_hex(6),
            sample_rate=rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        stream = self._plugin._provider.stream(self.input_text)
        try:
            async for chunk in stream:
                pcm = chunk.pcm
                if chunk.sample_rate != rate:
                    pcm = resample(pcm, chunk.sample_rate, rate)
                output_emitter.push(pcm.tobytes())
        except ProviderError as exc:
            raise to_api_error(exc) from exc
        finally:
            await stream.aclose()
        output_emitter.flush()
