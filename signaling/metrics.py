"""Prometheus metrics of the server, fed by session events."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent.events import AgentEvent, InterruptionEvent, MetricsEvent

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServerMetrics:
    """The server's metrics in their own registry (safe with several apps per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("parley_active_calls", "Calls in progress", registry=r)
        self.calls = Counter("parley_calls", "Calls started", ["transport"], registry=r)
        self.turns = Counter("parley_turns", "Agent turns completed", registry=r)
        self.barge_ins = Counter("parley_barge_ins", "Confirmed interruptions", registry=r)
        self.false_interruptions = Counter(
            "parley_false_interruptions", "Interruptions that resumed the reply", registry=r
        )

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, buckets=_LATENCY_BUCKETS, registry=r)

        self.voice_to_voice = hist(
            "parley_voice_to_voice_seconds", "End of caller speech to first agent audio"
        )
        self.vad_to_final = hist(
            "parley_vad_to_final_transcript_seconds", "End of caller speech to final transcript"
        )
        self.llm_first_token = hist("parley_llm_first_token_seconds", "LLM time to first token")
        self.tts_first_audio = hist(
            "parley_tts_first_audio_seconds", "TTS time from first text chunk to first audio"
        )

    def observe(self, event: AgentEvent) -> None:
        """Session event sink."""
        if isinstance(event, MetricsEvent):
            self.turns.inc()
            for hist, value in (
                (self.voice_to_voice, event.voice_to_voice_ms),
                (self.llm_first_token, event.llm_first_token_ms),
                (self.tts_first_audio, event.tts_first_audio_ms),
            ):
                if value is not None:
                    hist.observe(value / 1000)
            if event.end_of_turn_ms is not None and event.stt_wait_ms is not None:
                self.vad_to_final.observe((event.end_of_turn_ms + event.stt_wait_ms) / 1000)
        elif isinstance(event, InterruptionEvent):
            if event.phase == "confirmed":
                self.barge_ins.inc()
            elif event.phase == "resumed":
                self.false_interruptions.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
