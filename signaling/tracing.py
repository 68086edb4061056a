"""OpenTelemetry traces of each agent turn's stages (the optional ``otel`` extra).

``start_tracing()`` is a no-op (None) unless ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set. Then, with the SDK and
the OTLP/HTTP exporter importable (``pip install parley[otel]``), it builds a
``TracerProvider`` of its own (the process-wide one is left alone) whose
``BatchSpanProcessor`` exports over OTLP/HTTP protobuf; without them it logs
one warning and the server runs untraced. The exporter reads the other
``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout, compression) itself;
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the service.

``TurnTracer`` is a session event sink: from each turn's ``MetricsEvent`` it
records a ``turn`` span (from the end of the caller's speech to the end of
the reply) with one child per stage the turn went through, placed at the
marks the session measured (``MetricsEvent.marks_ms``):

``vad.end_of_turn``      end of speech -> the turn detector ends the turn
``stt.final``            the final transcription (its processing time) -> transcript ready
``llm.first_token``      LLM request -> first token
``tts.first_audio``      first text chunk to synthesis -> its first audio
``playout.first_audio``  first synthesized audio -> first audio played to the caller

Attributes: the call, session, turn and transport ids and each stage's
provider and model; never a transcript or reply text. The sink runs in the
call's tasks, so the ids come from the call's context
(``signaling.correlation``); spans are only queued there, the batch
processor exports them from its own thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.events import AgentEvent, MetricsEvent
from signaling.correlation import CallContext, current_call

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
SUPPORTED_PROTOCOL = "http/protobuf"
TRACER_NAME = "parley"
SERVICE_NAME = "parley"

STAGES: tuple[tuple[str, str, str], ...] = (
    ("vad.end_of_turn", "speech_end", "turn_end"),
    ("stt.final", "stt_start", "stt_ready"),
    ("llm.first_token", "llm_start", "llm_first_token"),
    ("tts.first_audio", "tts_first_chunk", "tts_first_audio"),
    ("playout.first_audio", "tts_first_audio", "first_audio"),
)
"""Each stage span: (name, the mark it starts at, the mark it ends at)."""

_PROVIDERS = {
    "stt.final": ("stt_provider", "stt_model"),
    "llm.first_token": ("llm_provider", "llm_model"),
    "tts.first_audio": ("tts_provider", "tts_voice"),
}


class TurnTracer:
    """A session event sink that turns each ``MetricsEvent`` into a ``turn`` trace."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry.trace import set_span_in_context

        self._tracer = tracer
        self._in_context = set_span_in_context

    def __call__(self, event: AgentEvent) -> None:
        """Session event sink: record a turn on its metrics, ignore the rest."""
        if isinstance(event, MetricsEvent):
            self.record(event, current_call())

    def record(self, event: MetricsEvent, call: CallContext | None = None) -> None:
        """The spans of one turn, timed from ``event.marks_ms`` (nothing without them)."""
        marks = event.marks_ms
        if "emitted" not in marks:
            return
        # wall-clock ns of the end of the caller's speech: the marks are offsets from it
        origin_ns = round(event.at * 1e9 - marks["emitted"] * 1e6)
        at = stage_marks(event)

        def ns(mark: str) -> int:
            return origin_ns + round(at[mark] * 1e6)

        common: dict[str, Any] = {"parley.turn_id": event.turn_id}
        if call is not None:
            common.update(
                {
                    "parley.call_id": call.call_id,
                    "parley.session_id": call.session_id,
                    "parley.transport": call.transport,
                }
            )
        turn_attrs = dict(common)
        for key in ("voice_to_voice_ms", "reply_first_audio_ms", "stt_wait_ms"):
            value = getattr(event, key)
            if value is not None:
                turn_attrs[f"parley.{key}"] = value
        turn_attrs.update(
            {
                "parley.interrupted": event.interrupted,
                "parley.speculative_hit": event.speculative_hit,
                "parley.llm_tokens": event.llm_tokens,
            }
        )
        turn = self._tracer.start_span("turn", start_time=ns("speech_end"), attributes=turn_attrs)
        context = self._in_context(turn)
        usage = event.usage
        for name, start, end in STAGES:
            if start not in at or end not in at:
                continue
            attrs = dict(common)
            attrs["parley.stage"] = name.split(".", 1)[0]
            keys = _PROVIDERS.get(name)
            if keys is not None:
                provider, model = usage.get(keys[0]), usage.get(keys[1])
                if provider:
                    attrs["parley.provider"] = str(provider)
                if model:
                    attrs["parley.model"] = str(model)
            span = self._tracer.start_span(
                name, context=context, start_time=ns(start), attributes=attrs
            )
            span.end(end_time=ns(end))
        turn.end(end_time=ns("emitted"))


def stage_marks(event: MetricsEvent) -> dict[str, float]:
    """The turn's marks in ms after the end of speech, completed for the stage spans.

    Adds ``speech_end`` (0) and ``stt_start`` (the final transcription's
    processing time before ``stt_ready``, not before the end of speech), drops
    the end-of-turn stage of a turn that had no speech (typed text, a
    greeting), and keeps every mark within the turn (0 .. ``emitted``).
    """
    marks = dict(event.marks_ms)
    emitted = marks.get("emitted", 0.0)
    out = {name: min(max(value, 0.0), emitted) for name, value in marks.items()}
    out["speech_end"] = 0.0
    if "stt_ready" in out:
        processing = event.stt_final_ms if event.stt_final_ms is not None else 0.0
        out["stt_start"] = max(out["stt_ready"] - processing, 0.0)
    elif out.get("turn_end", 0.0) == 0.0:
        out.pop("turn_end", None)  # no speech: no end-of-turn stage
    return out


class Tracing:
    """The tracer provider of one app and its event sink."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.sink = TurnTracer(provider.get_tracer(TRACER_NAME))

    def shutdown(self) -> None:
        """Export what is queued and stop (blocking: run it off the event loop)."""
        self.provider.shutdown()


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where traces go: the traces endpoint as given, or the base endpoint + ``/v1/traces``."""
    specific = env.get(TRACES_ENDPOINT_ENV, "").strip()
    if specific:
        return specific
    base = env.get(ENDPOINT_ENV, "").strip()
    return f"{base.rstrip('/')}/v1/traces" if base else None


def start_tracing(env: Mapping[str, str] | None = None) -> Tracing | None:
    """Set up turn tracing if an OTLP endpoint is configured (see the module docstring).

    Returns None when no endpoint is set, when ``OTEL_SDK_DISABLED`` is true, or
    when the ``otel`` extra is not installed (then with one warning).
    """
    environ = os.environ if env is None else env
    endpoint = traces_endpoint(environ)
    if endpoint is None:
        return None
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.info("tracing: OTEL_SDK_DISABLED is set, turns are not traced")
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing: %s is set but the OpenTelemetry SDK is not installed "
            "(pip install 'parley[otel]'); turns are not traced",
            ENDPOINT_ENV if ENDPOINT_ENV in environ else TRACES_ENDPOINT_ENV,
        )
        return None
    for name in PROTOCOL_ENVS:
        protocol = environ.get(name, "").strip().lower()
        if protocol and protocol != SUPPORTED_PROTOCOL:
            log.warning(
                "tracing: %s=%s is not supported; exporting with %s",
                name,
                protocol[:20],
                SUPPORTED_PROTOCOL,
            )
            break
    attributes = {} if "OTEL_SERVICE_NAME" in environ else {"service.name": SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    log.info("tracing: turn spans are exported over OTLP/HTTP")
    return Tracing(provider)
