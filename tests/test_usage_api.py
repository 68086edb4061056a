"""Per-turn usage and cost through the server: recorded with the turn, returned by the
sessions API with per-session sums, and exported to Prometheus.

The API runs in process over ASGI with fake models, on both store backends
(PostgreSQL + Redis, and SQLite), with a price table of round figures
(``PARLEY_PRICES``) so the expected costs are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from agent.events import MetricsEvent, ReplyEvent, TranscriptEvent
from agent.pricing import PriceTable, PriceTableError
from agent.usage import TurnUsage
from signaling.app import create_app
from signaling.metrics import PROVIDER_LABELS_MAX, ServerMetrics
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from tests.fakes import fake_models
from tests.server import app_state, asgi_client, bearer

ADMIN = "operator-" + "u" * 32
PRICES = """
providers:
  local: 0
  acme:
    llm: {usd_per_1m_prompt_tokens: 1.0, usd_per_1m_completion_tokens: 2.0}
    stt: {usd_per_hour: 3.6, min_seconds_per_request: 10}
    tts: {usd_per_1k_chars: 0.5}
"""

TURNS = [
    # STT 4 s billed as 10 s: 0.01; LLM 0.001 + 0.001; TTS 0.1 -> 0.112
    TurnUsage(
        stt_provider="acme",
        stt_model="ears-2",
        stt_audio_s=4.0,
        llm_provider="acme",
        llm_model="brain-1",
        prompt_tokens=1_000,
        completion_tokens=500,
        tts_provider="acme",
        tts_voice="acme:ana",
        tts_chars=200,
        chains={"stt": "acme,local", "llm": "acme,local", "tts": "acme"},
    ),
    # STT 12 s: 0.012; the local fallback LLM: 0; TTS 0.05 -> 0.062
    TurnUsage(
        stt_provider="acme",
        stt_model="ears-2",
        stt_audio_s=12.0,
        llm_provider="local",
        llm_model="smollm2-135m",
        prompt_tokens=300,
        completion_tokens=40,
        tts_provider="acme",
        tts_voice="acme:ana",
        tts_chars=100,
        chains={"stt": "acme,local", "llm": "acme,local", "tts": "acme"},
    ),
    # a typed turn answered by a provider the table does not price: no cost
    TurnUsage(llm_provider="mystery", llm_model="m-1", prompt_tokens=50, completion_tokens=10),
]


@pytest.fixture
def prices_path(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES, "utf-8")
    return path


@pytest.fixture
async def app(settings: StoreSettings, prices_path: Path) -> AsyncIterator[FastAPI]:
    application = create_app(
        ServerSettings(jwt_secret="x" * 32, admin_token=ADMIN, prices=prices_path),
        models=fake_models(),
        store_settings=settings,
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


def _metrics(turn_id: str, usage: TurnUsage) -> MetricsEvent:
    return MetricsEvent(
        turn_id=turn_id,
        voice_to_voice_ms=810.0,
        end_of_turn_ms=700.0,
        stt_final_ms=120.0,
        stt_wait_ms=0.0,
        llm_first_token_ms=180.0,
        tts_first_audio_ms=90.0,
        reply_first_audio_ms=110.0,
        llm_tokens=usage.completion_tokens,
        speculative_hit=True,
        interrupted=False,
        usage=usage.to_dict(),
    )


async def _call_with_turns(app: FastAPI) -> str:
    """A call whose three turns go through the app's recorder and metrics sink."""
    st = app_state(app)
    call = await st.calls.open("websocket", room_id=None, output_rate=16_000)
    recorder = call.recorder
    assert recorder is not None
    for i, usage in enumerate(TURNS, 1):
        turn_id = f"turn_{i}"
        events = [
            TranscriptEvent(turn_id=turn_id, text=f"question {i}", final=True, confidence=0.9),
            ReplyEvent(
                turn_id=turn_id, text=f"answer {i}", heard_text=f"answer {i}", interrupted=False
            ),
            _metrics(turn_id, usage),
        ]
        for event in events:
            recorder(event)
            st.metrics.observe(event)
    await st.calls.end(call, "test over")
    assert await st.store.writer.flush(10)
    return call.session.id


async def test_history_returns_each_turns_usage_and_cost(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    session_id = await _call_with_turns(app)
    r = await client.get(f"/v1/sessions/{session_id}/history", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    turns = r.json()["turns"]
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", "question 1"),
        ("assistant", "answer 1"),
        ("user", "question 2"),
        ("assistant", "answer 2"),
        ("user", "question 3"),
        ("assistant", "answer 3"),
    ]
    assert all(t["usage"] is None for t in turns if t["role"] == "user")
    first, second, third = (t["usage"] for t in turns if t["role"] == "assistant")
    # the turn's usage, as the agent reported it, with the estimate filled in
    assert {k: v for k, v in first.items() if k not in ("cost_usd", "cost_by_stage")} == {
        k: v for k, v in TURNS[0].to_dict().items() if k != "cost_usd"
    }
    assert first["chains"] == {"stt": "acme,local", "llm": "acme,local", "tts": "acme"}
    assert first["cost_usd"] == pytest.approx(0.112)
    assert first["cost_by_stage"] == pytest.approx({"stt": 0.01, "llm": 0.002, "tts": 0.1})
    assert second["cost_usd"] == pytest.approx(0.062)
    assert second["cost_by_stage"] == pytest.approx({"stt": 0.012, "llm": 0.0, "tts": 0.05})
    assert third["llm_provider"] == "mystery" and third["cost_usd"] is None
    assert third["cost_by_stage"] == {}
    # the existing fields are all still there
    assert {"seq", "turn_id", "heard_text", "interrupted", "latencies"} <= turns[1].keys()


SUMS = {
    "turns": 3,
    "priced_turns": 2,
    "prompt_tokens": 1_350,
    "completion_tokens": 550,
    "stt_audio_s": 16.0,
    "tts_chars": 300,
}


async def test_session_sums_add_up_over_its_turns(app: FastAPI, client: httpx.AsyncClient) -> None:
    session_id = await _call_with_turns(app)
    r = await client.get(f"/v1/sessions/{session_id}", headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == session_id and body["turn_count"] == 3  # existing fields unchanged
    usage = body["usage"]
    assert {k: usage[k] for k in SUMS} == SUMS
    assert usage["cost_usd"] == pytest.approx(0.112 + 0.062)
    providers = usage["providers"]
    assert providers["stt"] == {
        "acme": {"turns": 2, "audio_s": 16.0, "cost_usd": pytest.approx(0.022)}
    }
    assert providers["llm"] == {
        "acme": {"turns": 1, "prompt_tokens": 1_000, "completion_tokens": 500, "cost_usd": 0.002},
        "local": {"turns": 1, "prompt_tokens": 300, "completion_tokens": 40, "cost_usd": 0.0},
        "mystery": {"turns": 1, "prompt_tokens": 50, "completion_tokens": 10, "cost_usd": None},
    }
    assert providers["tts"] == {"acme": {"turns": 2, "chars": 300, "cost_usd": pytest.approx(0.15)}}
    # the history sums the same turns
    history = (await client.get(f"/v1/sessions/{session_id}/history", headers=bearer(ADMIN))).json()
    assert history["usage"] == usage

    # a session with no recorded usage sums to nothing, with no cost
    fresh = (await client.post("/v1/sessions")).json()
    r = await client.get(f"/v1/sessions/{fresh['id']}", headers=bearer(fresh["token"]))
    assert r.status_code == 200, r.text
    empty = r.json()["usage"]
    assert empty["turns"] == 0 and empty["cost_usd"] is None
    assert empty["providers"] == {"stt": {}, "llm": {}, "tts": {}}


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


async def test_metrics_export_usage_and_cost_by_provider_and_stage(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await _call_with_turns(app)
    r = await client.get("/metrics")
    assert r.status_code == 200
    samples = _samples(r.text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    requests = "parley_provider_requests_total"
    assert value(requests, stage="stt", provider="acme") == 2
    assert value(requests, stage="llm", provider="acme") == 1
    assert value(requests, stage="llm", provider="local") == 1
    assert value(requests, stage="llm", provider="mystery") == 1
    assert value(requests, stage="tts", provider="acme") == 2
    tokens = "parley_llm_tokens_total"
    assert value(tokens, provider="acme", kind="prompt") == 1_000
    assert value(tokens, provider="acme", kind="completion") == 500
    assert value(tokens, provider="local", kind="prompt") == 300
    assert value(tokens, provider="mystery", kind="completion") == 10
    assert value("parley_stt_audio_seconds_total", provider="acme") == 16.0
    assert value("parley_tts_characters_total", provider="acme") == 300
    cost = "parley_cost_usd_total"
    assert value(cost, stage="stt", provider="acme") == pytest.approx(0.022)
    assert value(cost, stage="llm", provider="acme") == pytest.approx(0.002)
    assert value(cost, stage="llm", provider="local") == 0.0
    assert value(cost, stage="tts", provider="acme") == pytest.approx(0.15)
    assert value(cost, stage="llm", provider="mystery") is None  # unpriced: no series
    assert value("parley_turns_total") == 3


def test_provider_labels_stay_bounded() -> None:
    metrics = ServerMetrics(PriceTable.parse({"providers": {"local": 0}}))
    names = [
        'Evil"} 1\nparley_x{a="',
        "x" * 40,
        "",
        *(f"p{i}" for i in range(PROVIDER_LABELS_MAX + 5)),
    ]
    for i, name in enumerate(names):
        metrics.observe(_metrics(f"t{i}", TurnUsage(tts_provider=name, tts_chars=1)))
    # a blank name means the stage did not run; unsafe names and those past the cap are "other"
    exported = {
        s.labels["provider"]: s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name == "parley_tts_characters"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(exported) == PROVIDER_LABELS_MAX + 1
    assert exported["other"] == 2 + 5
    assert exported["p0"] == 1 and "Evil" not in "".join(exported)
    # a provider seen before the cap keeps its own series
    metrics.observe(_metrics("again", TurnUsage(tts_provider="P0", tts_chars=4)))
    assert b'parley_tts_characters_total{provider="p0"} 5.0' in metrics.render()


def test_the_price_table_comes_from_parley_prices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prices_path: Path
) -> None:
    monkeypatch.setenv("PARLEY_PRICES", str(prices_path))
    assert ServerSettings().prices == prices_path
    monkeypatch.delenv("PARLEY_PRICES")
    assert ServerSettings().prices is None  # the shipped table
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  acme:\n    llm: {usd_per_1m_prompt_tokens: free}\n", "utf-8")
    with pytest.raises(PriceTableError, match=r"providers\.acme\.llm\.usd_per_1m_prompt_tokens"):
        create_app(ServerSettings(jwt_secret="x" * 32, prices=bad), models=fake_models())
