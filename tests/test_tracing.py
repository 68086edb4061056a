"""OpenTelemetry turn traces, exported over OTLP/HTTP to a loopback collector.

The collector is a small HTTP server in this module that accepts
``POST /v1/traces`` and decodes each protobuf ``ExportTraceServiceRequest``.
The server under test is the real app on loopback (``tests.server``) with
fake providers, ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at the collector; a
WebSocket caller speaks one turn and types another. Each turn must arrive as
a ``turn`` span whose children are its stages, timed as the turn's metrics
event (the caller's copy) measured them, with the call's ids and each stage's
provider, and with no word of the conversation anywhere in the export.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agent.llm import UsageDelta
from signaling.app import create_app
from signaling.settings import ServerSettings
from signaling.tracing import ENDPOINT_ENV, TRACES_ENDPOINT_ENV, start_tracing, traces_endpoint
from store.settings import StoreSettings
from tests.fakes import FakeSTT, FakeTTS, ScriptedLLM, fake_models, tone
from tests.server import app_state, asgi_client, running_server
from tests.wscall import WsCall, silence_after, websocket_call

CALLER_WORDS = "what time does the ferry to the island leave"
TYPED = "and how much is a return ticket for two adults"
REPLY_VOICE = "The first ferry leaves at nine from pier four."
REPLY_TYPED = "A return for two adults costs forty euros."
STAGES = {
    "vad.end_of_turn",
    "stt.final",
    "llm.first_token",
    "tts.first_audio",
    "playout.first_audio",
}
TOLERANCE_NS = 500_000
"""Span durations against the metrics (rounded to 0.1 ms each): within 0.5 ms."""


# ------------------------------------------------------------------ the collector


class Collector:
    """A loopback OTLP/HTTP trace collector (protobuf, optionally gzip)."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.bodies: list[bytes] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.bodies.append(body)
                collector.requests.append(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) of every span received."""
        out = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    out += [(resource, span) for span in scope_spans.spans]
        return out


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


# ------------------------------------------------------------------ a traced call


@dataclass
class Turn:
    metrics: dict[str, Any]
    span: Span
    children: dict[str, Span]


def _ms(span: Span) -> float:
    return (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6


def _turns(call: WsCall, spans: list[Span]) -> list[Turn]:
    """The caller's metrics events with their turn spans and those spans' children."""
    out = []
    for metrics in call.of_type("metrics"):
        [turn] = [
            s
            for s in spans
            if s.name == "turn" and attributes(s.attributes)["parley.turn_id"] == metrics["turn_id"]
        ]
        children = {s.name: s for s in spans if s.parent_span_id == turn.span_id}
        assert len(children) == len([s for s in spans if s.parent_span_id == turn.span_id])
        out.append(Turn(metrics, turn, children))
    return out


async def test_turn_spans_reach_the_collector(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, collector.url)
    monkeypatch.delenv(TRACES_ENDPOINT_ENV, raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "parley-under-test")
    usage = UsageDelta("scripted", "scripted-llm-1", prompt_tokens=20, completion_tokens=9)
    models = fake_models(
        stt=FakeSTT([CALLER_WORDS], delay=0.06),
        llm=ScriptedLLM([[REPLY_VOICE, usage], [REPLY_TYPED, usage]], token_delay=0.02),
        tts=FakeTTS(seconds_per_char=0.01, chunk_delay=0.03),
    )
    with running_server(models) as base_url:
        call = await websocket_call(base_url, speech=[silence_after(tone(1.0), 1.2)], typed=[TYPED])
    # the server has stopped: its provider was shut down, every span exported
    assert sorted(call.texts) == sorted([CALLER_WORDS, TYPED, REPLY_VOICE, REPLY_TYPED])
    received = collector.spans()
    assert {r.get("service.name") for r, _ in received} == {"parley-under-test"}
    spans = [s for _, s in received]
    voice, typed = _turns(call, spans)
    assert len([s for s in spans if s.name == "turn"]) == 2

    for turn in (voice, typed):
        m, parent = turn.metrics, turn.span
        attrs = attributes(parent.attributes)
        assert attrs["parley.call_id"] == call.call_id
        assert attrs["parley.session_id"] == call.hello["session_id"]
        assert attrs["parley.transport"] == "websocket"
        assert attrs["parley.voice_to_voice_ms"] == pytest.approx(m["voice_to_voice_ms"])
        # the turn ends when its metrics were made, and holds every stage
        assert abs(parent.end_time_unix_nano - m["at"] * 1e9) < 2e6
        for child in turn.children.values():
            assert child.trace_id == parent.trace_id
            assert parent.start_time_unix_nano <= child.start_time_unix_nano
            assert child.start_time_unix_nano <= child.end_time_unix_nano
            assert child.end_time_unix_nano <= parent.end_time_unix_nano
            child_attrs = attributes(child.attributes)
            assert child_attrs["parley.call_id"] == call.call_id
            assert child_attrs["parley.turn_id"] == m["turn_id"]
        # each stage as long as the turn's metrics say
        expected = {
            "vad.end_of_turn": m["end_of_turn_ms"],
            "stt.final": m["stt_final_ms"],
            "llm.first_token": m["llm_first_token_ms"],
            "tts.first_audio": m["tts_first_audio_ms"],
        }
        for name, ms in expected.items():
            if name in turn.children:
                assert abs(_ms(turn.children[name]) - ms) * 1e6 <= TOLERANCE_NS, name
        playout = turn.children["playout.first_audio"]
        voice_to_voice = (playout.end_time_unix_nano - parent.start_time_unix_nano) / 1e6
        assert abs(voice_to_voice - m["voice_to_voice_ms"]) * 1e6 <= TOLERANCE_NS
        llm = attributes(turn.children["llm.first_token"].attributes)
        assert (llm["parley.provider"], llm["parley.model"]) == ("scripted", "scripted-llm-1")
        tts = attributes(turn.children["tts.first_audio"].attributes)
        assert (tts["parley.provider"], tts["parley.model"]) == ("local", "fake-voice")

    # the spoken turn went through every stage, in order; the typed one had no speech
    assert set(voice.children) == STAGES
    assert set(typed.children) == STAGES - {"vad.end_of_turn", "stt.final"}
    c = voice.children
    assert c["vad.end_of_turn"].start_time_unix_nano == voice.span.start_time_unix_nano
    assert _ms(c["vad.end_of_turn"]) >= 500  # the silence timer (700 ms by default)
    assert _ms(c["stt.final"]) >= 55  # the fake STT's 60 ms
    assert _ms(c["llm.first_token"]) >= 15 and _ms(c["tts.first_audio"]) >= 25
    assert attributes(c["stt.final"].attributes)["parley.provider"] == "local"
    # the reply started on the pause's speculative transcript (turn.preemptive_reply), while
    # the end of turn was still pending; its audio waited for the turn to end
    assert voice.metrics["preemptive"]
    assert c["llm.first_token"].start_time_unix_nano < c["vad.end_of_turn"].end_time_unix_nano
    assert c["playout.first_audio"].end_time_unix_nano >= c["vad.end_of_turn"].end_time_unix_nano
    assert c["tts.first_audio"].start_time_unix_nano >= c["llm.first_token"].end_time_unix_nano
    assert c["playout.first_audio"].start_time_unix_nano == c["tts.first_audio"].end_time_unix_nano
    # never a word of the conversation
    exported = b"".join(collector.bodies)
    for text in (CALLER_WORDS, TYPED, REPLY_VOICE, REPLY_TYPED):
        assert text.encode() not in exported
        assert text.split()[-1].encode() not in exported


# ------------------------------------------------------------------ set-up


@contextlib.asynccontextmanager
async def _started_app(tmp_path: Any) -> AsyncIterator[Any]:
    app = create_app(
        ServerSettings(jwt_secret="x" * 32),
        models=fake_models(),
        store_settings=StoreSettings(PARLEY_DATA_DIR=tmp_path, DATABASE_URL=None, REDIS_URL=None),
    )
    async with app.router.lifespan_context(app):
        yield app


async def test_without_the_sdk_one_warning_and_no_tracing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    for module in (
        "opentelemetry.sdk.trace",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.sdk.resources",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    caplog.set_level(logging.DEBUG, logger="signaling.tracing")
    async with _started_app(tmp_path) as app, asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        sinks = app_state(app).calls._sinks
        assert len(sinks) == 1  # the metrics' only
    records = [r for r in caplog.records if r.name == "signaling.tracing"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "parley[otel]" in records[0].getMessage()
    assert "127.0.0.1:9" not in records[0].getMessage()


def test_no_endpoint_no_tracing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="signaling.tracing")
    assert start_tracing({}) is None
    assert start_tracing({ENDPOINT_ENV: "http://x:4318", "OTEL_SDK_DISABLED": "true"}) is None
    assert [r.levelno for r in caplog.records if r.name == "signaling.tracing"] == [logging.INFO]


def test_traces_endpoint() -> None:
    assert traces_endpoint({ENDPOINT_ENV: "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert traces_endpoint({ENDPOINT_ENV: "http://c:4318", TRACES_ENDPOINT_ENV: "http://t/x"}) == (
        "http://t/x"
    )
    assert traces_endpoint({ENDPOINT_ENV: "  "}) is None
