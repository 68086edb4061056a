"""The signaling API over real HTTP on loopback: rooms, tokens, errors, utilities."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import av
import httpx
import jwt
import numpy as np
import pytest

from agent.runtime import AgentModels
from agent.tts import SpeechChunk
from media.frames import AudioFrame
from media.wav import read_wav, wav_bytes
from signaling import voice_api
from tests.server import TEST_SECRET, running_server
from tests.speech import compose
from tests.textnorm import phrase_error, word_error_rate

pytestmark = pytest.mark.slow

FAKE_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    "a=fingerprint:sha-256 00:11\r\na=rtpmap:111 opus/48000/2\r\n"
)


@pytest.fixture(scope="module")
def base_url(models: AgentModels) -> Iterator[str]:
    with running_server(models, max_calls=2, max_body_bytes=200_000) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:
        yield c


async def new_room(client: httpx.AsyncClient) -> dict[str, object]:
    r = await client.post("/v1/rooms", json={"name": "test"})
    assert r.status_code == 201
    room: dict[str, object] = r.json()
    return room


async def test_health_docs_page_and_metrics(client: httpx.AsyncClient) -> None:
    health = (await client.get("/health")).json()
    assert health["status"] == "ok" and health["models_loaded"] is True
    assert set(health["models"]) >= {"vad", "stt", "llm", "tts"}
    # local models only: no chain to fall back along, no circuit breaker
    assert health["providers"]["circuits"] == {}
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/rooms/{room_id}/offer" in spec["paths"]
    page = await client.get("/")
    assert page.status_code == 200 and 'id="call"' in page.text
    assert (await client.get("/static/app.js")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert "parley_active_calls" in metrics and "parley_voice_to_voice_seconds_bucket" in metrics


async def test_room_lifecycle_and_token(client: httpx.AsyncClient) -> None:
    room = await new_room(client)
    assert str(room["id"]).startswith("room_") and room["token"] and room["ice_servers"] == []
    claims = jwt.decode(str(room["token"]), TEST_SECRET, algorithms=["HS256"], issuer="parley")
    assert claims["room"] == room["id"] and claims["exp"] > time.time()
    auth = {"Authorization": f"Bearer {room['token']}"}
    # reading a room needs its join token (or an admin credential)
    assert (await client.get(f"/v1/rooms/{room['id']}")).status_code == 401
    got = (await client.get(f"/v1/rooms/{room['id']}", headers=auth)).json()
    assert got["id"] == room["id"] and got["calls"] == [] and "token" not in got
    assert (await client.delete(f"/v1/rooms/{room['id']}", headers=auth)).status_code == 200
    assert (await client.get(f"/v1/rooms/{room['id']}", headers=auth)).status_code == 404
    assert (await client.get("/v1/ice-servers")).json() == {"ice_servers": []}


async def test_offer_errors(client: httpx.AsyncClient) -> None:
    room = await new_room(client)
    other = await new_room(client)
    url = f"/v1/rooms/{room['id']}/offer"
    offer = {"sdp": FAKE_OFFER, "type": "offer"}

    def bearer(token: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    expired = jwt.encode(
        {"iss": "parley", "sub": "c", "room": room["id"], "iat": 1, "exp": int(time.time()) - 60},
        TEST_SECRET,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {"iss": "parley", "sub": "c", "room": room["id"], "iat": 1, "exp": 2**31},
        "another-secret-that-is-long-enough-for-hs256",
        algorithm="HS256",
    )
    cases: list[tuple[dict[str, str], int, str]] = [
        ({}, 401, "unauthorized"),
        (bearer("not-a-jwt"), 401, "unauthorized"),
        (bearer(expired), 401, "unauthorized"),
        (bearer(forged), 401, "unauthorized"),
        (bearer(other["token"]), 403, "forbidden"),
    ]
    for headers, status, code in cases:
        r = await client.post(url, json=offer, headers=headers)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
    r = await client.post("/v1/rooms/room_nope/offer", json=offer, headers=bearer(room["token"]))
    assert r.status_code == 404
    auth = bearer(room["token"])
    for bad in ["garbage", "v=0\r\ns=-\r\n", FAKE_OFFER.replace("m=audio", "m=video")]:
        r = await client.post(url, json={"sdp": bad, "type": "offer"}, headers=auth)
        assert r.status_code == 400 and r.json()["error"] == "bad_sdp"
    r = await client.post(url, json={"sdp": FAKE_OFFER, "type": "answer"}, headers=auth)
    assert r.status_code == 400
    r = await client.post(
        url, content=b"{not json", headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    r = await client.post(url, content=FAKE_OFFER, headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.post(
        url, content=b"x" * 300_000, headers={**auth, "Content-Type": "application/sdp"}
    )
    assert r.status_code == 413
    # a syntactically plausible offer aiortc cannot use: 400, and no call leaks
    r = await client.post(
        url, content=FAKE_OFFER, headers={**auth, "Content-Type": "application/sdp"}
    )
    assert r.status_code == 400
    assert (await client.get("/health")).json()["active_calls"] == 0


async def session_turns(
    client: httpx.AsyncClient, session_id: str, headers: dict[str, str], count: int
) -> list[dict[str, object]]:
    """The session's stored turns, once the background writer has written ``count``."""
    deadline = time.monotonic() + 15
    while True:
        r = await client.get(f"/v1/sessions/{session_id}/history", headers=headers)
        assert r.status_code == 200, r.text
        turns: list[dict[str, object]] = r.json()["turns"]
        if len(turns) >= count or time.monotonic() > deadline:
            return turns
        await asyncio.sleep(0.05)


async def test_chat_text_keeps_a_conversation(client: httpx.AsyncClient) -> None:
    hello, follow_up_text = "Hello, my name is Ada.", "What did I just say?"
    r = await client.post("/v1/chat/text", json={"text": hello})
    assert r.status_code == 200
    first = r.json()
    assert str(first["reply"]).strip()
    assert first["session_id"].startswith("ses_") and first["session_token"]
    session_id = first["session_id"]
    own = {"Authorization": f"Bearer {first['session_token']}"}

    follow_up = {"text": follow_up_text, "session_id": session_id}
    r = await client.post("/v1/chat/text", json=follow_up, headers=own)
    assert r.status_code == 200
    second = r.json()
    # The same session goes on: its id is carried, no new token is minted.
    assert second["session_id"] == session_id and second["session_token"] is None
    assert str(second["reply"]).strip()

    # The session's history holds both exchanges, in order, as said and answered.
    turns = await session_turns(client, session_id, own, 4)
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", hello),
        ("assistant", first["reply"]),
        ("user", follow_up_text),
        ("assistant", second["reply"]),
    ]
    seqs = [int(str(t["seq"])) for t in turns]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert turns[0]["turn_id"] == turns[1]["turn_id"] != turns[2]["turn_id"] == turns[3]["turn_id"]
    assert all(t["heard_text"] == t["text"] and not t["interrupted"] for t in turns[1::2])
    info = (await client.get(f"/v1/sessions/{session_id}", headers=own)).json()
    assert info["transport"] == "text" and info["turn_count"] == 2

    # Only the session's own token may continue it or read it.
    assert (await client.post("/v1/chat/text", json=follow_up)).status_code == 401
    other = (await client.post("/v1/chat/text", json={"text": "Hi."})).json()
    assert other["session_id"] != session_id
    theirs = {"Authorization": f"Bearer {other['session_token']}"}
    assert (await client.post("/v1/chat/text", json=follow_up, headers=theirs)).status_code == 403
    r = await client.get(f"/v1/sessions/{session_id}/history", headers=theirs)
    assert r.status_code == 403
    assert (await client.post("/v1/chat/text", json={"text": ""})).status_code == 422
    # The refused requests added nothing: the one writer queue is FIFO, so once the
    # later session's turns are stored, anything queued before them would be too.
    assert len(await session_turns(client, other["session_id"], theirs, 2)) == 2
    assert len(await session_turns(client, session_id, own, 4)) == 4


async def test_stt_upload_wav_ogg_and_garbage(client: httpx.AsyncClient) -> None:
    pcm = compose(0.3, "Please book a table for two.", 0.3)
    wav = wav_bytes(AudioFrame(pcm, 16000))
    r = await client.post("/v1/voice/stt", content=wav, headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    text = r.json()["text"]
    assert word_error_rate("Please book a table for two.", text) <= 1 / 3, text
    # OGG/Opus, encoded with PyAV, sent as multipart
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for f in resampler.resample(frame):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    r = await client.post("/v1/voice/stt", files={"file": ("q.ogg", buf.getvalue(), "audio/ogg")})
    assert r.status_code == 200, r.text
    text = r.json()["text"]
    assert phrase_error(text, "book a table for two") <= 0.2, text
    r = await client.post("/v1/voice/stt", content=b"\x00garbage" * 100)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media"
    r = await client.post("/v1/voice/stt", content=b"x" * 300_000)
    assert r.status_code == 413


async def test_tts_returns_wav(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/voice/tts", json={"text": "Hello from the agent."})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    audio = read_wav(r.content)
    assert audio.sample_rate == 22050 and audio.duration > 0.5
    assert np.abs(audio.samples).max() > 3000
    assert (await client.post("/v1/voice/tts", json={"text": "x" * 3000})).status_code == 422


async def test_tts_stops_at_its_audio_bound(
    client: httpx.AsyncClient, models: AgentModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text that makes more speech than the bound gets 413 as soon as the bound is passed
    (the rest is never synthesized), and the voice is free for the next request."""
    monkeypatch.setattr(voice_api, "MAX_TTS_SECONDS", 1.5)
    voice = models.tts
    pulled: list[SpeechChunk] = []

    async def counted(text: str) -> AsyncGenerator[SpeechChunk, None]:
        async with contextlib.aclosing(type(voice).stream(voice, text)) as chunks:
            async for chunk in chunks:
                pulled.append(chunk)
                yield chunk

    monkeypatch.setattr(voice, "stream", counted)
    sentences = [f"This is sentence number {n} of a long text." for n in range(12)]
    r = await client.post("/v1/voice/tts", json={"text": " ".join(sentences)})
    assert r.status_code == 413 and r.json()["error"] == "speech_too_long"
    spoken = sum(chunk.pcm.size / chunk.sample_rate for chunk in pulled)
    assert 1.5 < spoken < 1.5 + max(c.pcm.size / c.sample_rate for c in pulled) + 1e-6
    assert len(pulled) < len(sentences)
    monkeypatch.undo()
    ok = await client.post("/v1/voice/tts", json={"text": sentences[0]})
    assert ok.status_code == 200


async def test_chat_input_too_long_for_the_model_is_413(client: httpx.AsyncClient) -> None:
    """Within the API's 4,000 characters but past the local model's 2,048-token context
    (single digits tokenize one by one): the client's fault, so 413, not a 5xx."""
    digits = " ".join(str(n % 10) for n in range(2000))
    r = await client.post("/v1/chat/text", json={"text": digits})
    assert r.status_code == 413 and r.json()["error"] == "input_too_long"
    ok = await client.post("/v1/chat/text", json={"text": "Hello there!"})
    assert ok.status_code == 200 and ok.json()["reply"]
