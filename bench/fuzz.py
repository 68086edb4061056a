"""Bad and awkward inputs to a running server, for the memory bench and the soak.

``Fuzzer`` holds one kind of request per method, each drawing its input from
a seeded ``random.Random``: text chat (new, continued and foreign sessions,
over-long, not JSON, wrong types, random code points), TTS (long texts with
and without punctuation, numbers espeak spells out, random code points), STT
(noise of various lengths and rates, random bytes, truncated and lying WAV
headers, over-long uploads), WebRTC offers (not SDP, unknown codecs, no audio,
bogus fingerprints, over-size, wrong content types, foreign tokens) and
WebSocket calls (no or bad token, binary garbage and odd-length audio,
malformed and unknown control messages, over-size frames, abrupt closes).
Each method returns the HTTP status (or WebSocket close code) and counts it
in ``statuses``; a status >= 500 is a server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import websockets

Request = Callable[[httpx.AsyncClient, random.Random], Awaitable[int]]
"""One fuzz request; returns the HTTP status (or the WebSocket close code)."""

WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"),
    *("seven", "wizards", "quietly", "hex", "jumbo", "boxes", "of", "frozen", "pizza"),
    *("near", "the", "harbour", "lights", "tonight"),
)


def prose(rng: random.Random, chars: int, punctuated: bool = True) -> str:
    """Words up to ``chars`` characters; with ``punctuated`` a sentence every ~12 words."""
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        if punctuated and out and rng.random() < 0.08:
            out[-1] += "."
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def garbage_text(rng: random.Random, chars: int) -> str:
    """Random code points across scripts, symbols and controls (valid UTF-8)."""
    alphabet = [chr(c) for c in (*range(0x20, 0x7F), *range(0xA0, 0x2FF), *range(0x400, 0x4FF))]
    alphabet += ["\u200b", "\u202e", "\n", "\t", "\U0001f600", "\U0001f4a9", "\ufeff"]
    return "".join(rng.choice(alphabet) for _ in range(chars))


def random_bytes(rng: random.Random, n: int) -> bytes:
    """``n`` random bytes."""
    return rng.randbytes(n)


def wav(pcm: np.ndarray[Any, np.dtype[np.int16]], rate: int = 16_000) -> bytes:
    """16-bit mono WAV bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def noise(rng: random.Random, seconds: float, rate: int = 16_000) -> bytes:
    """A WAV of quiet noise (no speech: the STT decodes it all the same)."""
    gen = np.random.default_rng(rng.randrange(2**32))
    return wav((gen.standard_normal(int(seconds * rate)) * 800).astype(np.int16), rate)


_OFFER_HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
_FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"


def bad_offer(rng: random.Random) -> str:
    """An SDP offer that must be refused with 400 (and must not take a call slot)."""
    audio = (
        "m=audio 9 UDP/TLS/RTP/SAVPF {pts}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n{fingerprint}"
        "a=setup:actpass\r\na=sendrecv\r\na=rtcp-mux\r\n{codecs}"
    )
    choice = rng.randrange(7)
    if choice == 0:  # only codecs nobody answers
        return _OFFER_HEAD + audio.format(
            pts="96 97",
            fingerprint=_FINGERPRINT,
            codecs="a=rtpmap:96 FOO/8000\r\na=rtpmap:97 BAR/16000\r\n",
        )
    if choice == 1:  # m=audio abc
        return _OFFER_HEAD + "m=audio abc UDP/TLS/RTP/SAVPF 111\r\n"
    if choice == 2:  # a fingerprint hash nobody verifies
        return _OFFER_HEAD + audio.format(
            pts="111",
            fingerprint="a=fingerprint:md5 " + ":".join(["AB"] * 16) + "\r\n",
            codecs="a=rtpmap:111 opus/48000/2\r\n",
        )
    if choice == 3:  # no audio at all
        return _OFFER_HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    if choice == 4:  # random text
        return garbage_text(rng, rng.choice([10, 500, 5000]))
    if choice == 5:  # huge (over the size limit)
        return _OFFER_HEAD + "a=x:" + "y" * 70_000 + "\r\n"
    return _OFFER_HEAD + "a=candidate:" + "1 " * 500 + "\r\n"  # a mangled candidate


@dataclass
class Fuzzer:
    """The requests of one pass, and the chat sessions it made (to continue some)."""

    sessions: list[tuple[str, str]] = field(default_factory=list)
    """(session id, token) of chat sessions created."""
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    """Per kind of request, how many times each status came back."""
    ws_url: str | None = None
    """The server's ``ws://`` base, for the WebSocket requests."""

    def count(self, name: str, status: int) -> int:
        """Record a status; returns it."""
        per = self.statuses.setdefault(name, {})
        per[status] = per.get(status, 0) + 1
        return status

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return sum(n for per in self.statuses.values() for s, n in per.items() if 500 <= s < 600)

    # ------------------------------------------------------------------ chat

    async def chat_new(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """A new session's first turn, 20 to 4,000 characters."""
        text = prose(rng, rng.choice([20, 400, 2000, 4000]))
        r = await client.post("/v1/chat/text", json={"text": text})
        if r.status_code == 200:
            body = r.json()
            self.sessions.append((body["session_id"], body["session_token"]))
        return self.count("chat new session", r.status_code)

    async def chat_continue(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """Another turn of a session this fuzzer made (a new one if there is none)."""
        if not self.sessions:
            return await self.chat_new(client, rng)
        sid, token = rng.choice(self.sessions)
        r = await client.post(
            "/v1/chat/text",
            json={"text": prose(rng, rng.choice([50, 1000, 4000])), "session_id": sid},
            headers={"Authorization": f"Bearer {token}"},
        )
        return self.count("chat continued", r.status_code)

    async def chat_bad(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """A chat request that must be refused (or answered without harm)."""
        choice = rng.randrange(5)
        if choice == 0:  # a session id that is not the caller's
            r = await client.post(
                "/v1/chat/text",
                json={"text": "hi", "session_id": f"ses_{rng.randrange(10**12)}"},
                headers={"Authorization": "Bearer not-a-token"},
            )
        elif choice == 1:  # over the length limit
            r = await client.post("/v1/chat/text", json={"text": "a" * 5000})
        elif choice == 2:  # not JSON
            r = await client.post(
                "/v1/chat/text",
                content=random_bytes(rng, 2000),
                headers={"Content-Type": "application/json"},
            )
        elif choice == 3:  # random characters
            r = await client.post("/v1/chat/text", json={"text": garbage_text(rng, 3000)})
        else:  # wrong types
            r = await client.post("/v1/chat/text", json={"text": 12, "session_id": ["x"]})
        return self.count("chat bad input", r.status_code)

    # ------------------------------------------------------------- utilities

    async def tts(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """A TTS request: 2,000 characters with or without punctuation, spelled-out numbers,
        random code points, or a short text."""
        choice = rng.randrange(5)
        if choice == 0:
            text = prose(rng, 2000, punctuated=False)  # one 2000-character "sentence"
        elif choice == 1:
            text = prose(rng, 2000)
        elif choice == 2:
            text = garbage_text(rng, 1500)
        elif choice == 3:
            text = " ".join(str(rng.randrange(10**9)) for _ in range(150))[:2000]
        else:
            text = prose(rng, rng.choice([10, 80, 300]))
        r = await client.post("/v1/voice/tts", json={"text": text})
        return self.count("tts", r.status_code)

    async def tts_short(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """A cheap TTS request with an awkward text (for quick passes)."""
        text = rng.choice([garbage_text(rng, 60), "1234567890 " * 4, prose(rng, 120, False)])
        r = await client.post("/v1/voice/tts", json={"text": text})
        return self.count("tts", r.status_code)

    async def stt(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """An STT upload: noise, random bytes, truncated or lying files, over-long audio."""
        choice = rng.randrange(6)
        if choice == 0:
            body = noise(rng, rng.choice([5.0, 30.0, 110.0]))
        elif choice == 1:
            body = random_bytes(rng, rng.choice([10, 5000, 200_000]))
        elif choice == 2:
            body = noise(rng, 20.0)[: rng.randrange(44, 20_000)]  # truncated
        elif choice == 3:
            body = noise(rng, 125.0)  # over the upload limit
        elif choice == 4:
            body = b"RIFF\xff\xff\xff\x7fWAVEfmt " + bytes(200)  # a lying header
        else:
            body = noise(rng, 3.0, rate=8000)
        r = await client.post(
            "/v1/voice/stt", content=body, headers={"Content-Type": "application/octet-stream"}
        )
        return self.count("stt", r.status_code)

    # ----------------------------------------------------------------- calls

    async def _room(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        r = await client.post("/v1/rooms", json={"name": "fuzz"})
        if r.status_code != 201:
            self.count("room", r.status_code)
            return None
        room: dict[str, Any] = r.json()
        return room

    async def offer_bad(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """A WebRTC offer that must be refused: bad SDP, wrong content type or token."""
        room = await self._room(client)
        if room is None:
            return 0
        url = f"/v1/rooms/{room['id']}/offer"
        auth = {"Authorization": f"Bearer {room['token']}"}
        choice = rng.randrange(4)
        if choice == 0:
            r = await client.post(url, json={"sdp": bad_offer(rng), "type": "offer"}, headers=auth)
        elif choice == 1:
            r = await client.post(
                url,
                content=bad_offer(rng).encode(),
                headers={**auth, "Content-Type": "application/sdp"},
            )
        elif choice == 2:  # JSON that is not an offer
            r = await client.post(
                url, content=random_bytes(rng, 300), headers={**auth, "Content-Type": "text/plain"}
            )
        else:  # another room's token, or none
            r = await client.post(
                f"/v1/rooms/room_{rng.randrange(10**9)}/offer",
                json={"sdp": bad_offer(rng), "type": "offer"},
                headers=auth if rng.random() < 0.5 else {},
            )
        await client.delete(f"/v1/rooms/{room['id']}", headers=auth)
        return self.count("offer bad input", r.status_code)

    async def ws_bad(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """A WebSocket call that misbehaves: bad token, garbage frames, abrupt close.

        Returns the close code the server sent (0 when the client closed first).
        """
        if self.ws_url is None:
            raise ValueError("ws_url is not set")
        room = await self._room(client)
        if room is None:
            return 0
        token = room["token"] if rng.random() < 0.8 else "not-a-token"
        url = f"{self.ws_url}/v1/ws/voice?room={room['id']}&token={token}"
        code = 0
        try:
            async with websockets.connect(url, max_size=2**22) as ws:
                for _ in range(rng.randrange(1, 8)):
                    kind = rng.randrange(5)
                    if kind == 0:
                        await ws.send(random_bytes(rng, rng.choice([1, 321, 4000])))
                    elif kind == 1:
                        await ws.send(garbage_text(rng, rng.choice([5, 500])))
                    elif kind == 2:
                        await ws.send(json.dumps({"type": rng.choice(["text", "dtmf", "x"])}))
                    elif kind == 3:
                        await ws.send(bytes(300_000))  # over the message limit
                    else:
                        await ws.send(json.dumps({"type": "text", "text": prose(rng, 200)}))
                    await asyncio.sleep(0.02)
                # Read (and drop) what the server answers until it closes or goes quiet.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        async for _answer in ws:
                            continue
                if ws.close_code is not None:
                    code = ws.close_code
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 0
        except (websockets.InvalidStatus, OSError):
            code = 0
        await client.delete(
            f"/v1/rooms/{room['id']}", headers={"Authorization": f"Bearer {room['token']}"}
        )
        return self.count("websocket bad input", code)

    async def api_bad(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        """Requests to the rest of the API with missing or foreign credentials and bad ids."""
        choice = rng.randrange(5)
        if choice == 0:
            r = await client.get(f"/v1/sessions/ses_{rng.randrange(10**9)}")
        elif choice == 1:
            r = await client.get(
                "/v1/sessions", params={"cursor": garbage_text(rng, 40), "limit": 500}
            )
        elif choice == 2:
            r = await client.delete(f"/v1/rooms/{garbage_text(rng, 8)}")
        elif choice == 3:
            r = await client.post("/v1/rooms", json={"name": "x" * 300})
        else:
            r = await client.request("PATCH", "/v1/rooms")
        return self.count("api bad input", r.status_code)


async def run_all(
    client: httpx.AsyncClient, requests: list[Request], concurrency: int, rng: random.Random
) -> int:
    """Make every request of ``requests`` once, ``concurrency`` at a time; returns how
    many got no answer at all (a transport error)."""
    queue = list(reversed(requests))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while queue:
            req = queue.pop()
            try:
                await req(client, rng)
            except httpx.HTTPError:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


async def burst(
    client: httpx.AsyncClient,
    kinds: list[Request],
    n: int,
    concurrency: int,
    rng: random.Random,
) -> int:
    """``n`` requests drawn at random from ``kinds``, ``concurrency`` at a time; returns
    how many got no answer at all."""
    return await run_all(client, [rng.choice(kinds) for _ in range(n)], concurrency, rng)
