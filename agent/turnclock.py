"""Wall-clock marks of one turn and the per-turn metrics built from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.events import MetricsEvent
from agent.usage import TurnUsage


@dataclass(slots=True)
class TurnClock:
    """Monotonic marks (seconds) of one turn, from the caller's last word to first audio."""

    speech_end: float
    turn_end: float
    stt_final_s: float | None = None
    stt_ready: float | None = None
    speculative_hit: bool = False
    llm_start: float | None = None
    llm_first_token: float | None = None
    llm_tokens: int = 0
    tts_first_chunk: float | None = None
    tts_first_audio: float | None = None
    usage: TurnUsage = field(default_factory=TurnUsage)
    preemptive: bool = False
    """The reply was started on the speculative transcript, before the turn ended."""
    released: float | None = None
    """A preemptive reply: when its turn was confirmed and its held audio released."""

    @classmethod
    def now(cls) -> TurnClock:
        """A clock for a turn that ends now (typed input, greeting)."""
        t = time.monotonic()
        return cls(speech_end=t, turn_end=t)

    def confirm(self, turn: TurnClock) -> None:
        """This clock's reply started preemptively and its turn is now confirmed: take
        the turn's marks (``turn``: the listener's clock of it) and mark the release."""
        self.speech_end, self.turn_end = turn.speech_end, turn.turn_end
        self.stt_final_s, self.stt_ready = turn.stt_final_s, turn.stt_ready
        self.speculative_hit = turn.speculative_hit
        mine, theirs = self.usage, turn.usage
        mine.stt_provider, mine.stt_model = theirs.stt_provider, theirs.stt_model
        mine.stt_audio_s = theirs.stt_audio_s
        self.preemptive = True
        self.released = time.monotonic()

    @property
    def hidden_s(self) -> float | None:
        """A preemptive reply's head start: its LLM and TTS work (from the request to
        the first synthesized audio) done before the release, in seconds."""
        if not self.preemptive or self.released is None or self.llm_start is None:
            return None
        ready = self.tts_first_audio if self.tts_first_audio is not None else self.released
        return max(0.0, min(ready, self.released) - self.llm_start)

    def metrics(self, turn_id: str, first_audio: float | None, interrupted: bool) -> MetricsEvent:
        """The turn's metrics event (milliseconds; None where a stage did not run)."""

        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        marks = {
            "turn_end": self.turn_end,
            "stt_ready": self.stt_ready,
            "llm_start": self.llm_start,
            "llm_first_token": self.llm_first_token,
            "tts_first_chunk": self.tts_first_chunk,
            "tts_first_audio": self.tts_first_audio,
            "released": self.released,
            "first_audio": first_audio,
            "emitted": time.monotonic(),
        }
        return MetricsEvent(
            turn_id=turn_id,
            voice_to_voice_ms=ms(self.speech_end, first_audio),
            end_of_turn_ms=ms(self.speech_end, self.turn_end),
            stt_final_ms=None if self.stt_final_s is None else round(self.stt_final_s * 1000, 1),
            stt_wait_ms=ms(self.turn_end, self.stt_ready),
            llm_first_token_ms=ms(self.llm_start, self.llm_first_token),
            tts_first_audio_ms=ms(self.tts_first_chunk, self.tts_first_audio),
            reply_first_audio_ms=ms(self.turn_end, first_audio),
            llm_tokens=self.llm_tokens,
            speculative_hit=self.speculative_hit,
            interrupted=interrupted,
            usage=self.usage.to_dict(),
            marks_ms={
                name: offset
                for name, mark in marks.items()
                if (offset := ms(self.speech_end, mark)) is not None
            },
            preemptive=self.preemptive,
            preemptive_hidden_ms=None if (h := self.hidden_s) is None else round(h * 1000, 1),
        )
