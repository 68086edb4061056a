"""REST utilities: text chat, speech-to-text of an upload, text-to-speech to WAV."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from agent.tts import SpeechChunk
from media.decode import decode_audio
from media.frames import PCM, PIPELINE_RATE, AudioFrame, FloatPCM, int16_to_float
from media.resample import resample
from media.wav import wav_bytes
from signaling.state import ApiError, State
from signaling.tokens import bearer

router = APIRouter(prefix="/v1")

MAX_UPLOAD_SECONDS = 120.0


class ChatIn(BaseModel):
    """Body of ``POST /v1/chat/text``."""

    text: str = Field(..., min_length=1, max_length=4000)
    session_id: str | None = Field(None, max_length=64)


class TtsIn(BaseModel):
    """Body of ``POST /v1/voice/tts``."""

    text: str = Field(..., min_length=1, max_length=2000)


@router.post("/chat/text")
async def chat_text(
    body: ChatIn, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """One text turn with the agent.

    Without ``session_id`` a new session starts and its token is returned;
    to continue a session (text or voice), pass its id and its token as Bearer.
    """
    token: str | None = None
    if body.session_id is not None:
        st.tokens.verify_session(bearer(authorization), body.session_id)
        session_id, reply = await st.chats.reply(body.text, body.session_id)
    else:
        session_id, reply = await st.chats.reply(body.text)
        token = st.tokens.mint_session(session_id)[0]
    return {"session_id": session_id, "session_token": token, "reply": reply}


@router.post("/voice/stt")
async def stt(request: Request, st: State) -> dict[str, Any]:
    """Transcribe an uploaded audio file (WAV, OGG, MP3, WebM...; raw body or multipart)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "bad_request", "multipart body needs a 'file' part")
        data = await upload.read()
    else:
        data = await request.body()
    # Decoding (PyAV) and the float conversion are CPU work: off the event loop.
    pcm, audio = await asyncio.to_thread(_decode_upload, data)
    result = await st.models.stt.transcribe(audio)
    return {
        "text": result.text,
        "confidence": round(result.confidence, 4),
        "duration_s": round(pcm.size / PIPELINE_RATE, 3),
        "processing_ms": round(result.processing_s * 1000, 1),
    }


def _decode_upload(data: bytes) -> tuple[PCM, FloatPCM]:
    """Decode an upload to 16 kHz mono int16 and float32 (blocking)."""
    pcm = decode_audio(data, max_seconds=MAX_UPLOAD_SECONDS)
    return pcm, int16_to_float(pcm)


@router.post("/voice/tts", response_class=Response)
async def tts(body: TtsIn, st: State) -> Response:
    """Synthesize text to a 16-bit mono WAV at the default voice's own rate.

    Chunks from another voice (a fallback provider) are resampled to that
    rate; ``X-Voice`` names the voices that actually spoke, in order.
    """
    engine = st.models.tts
    chunks = [chunk async for chunk in engine.stream(body.text)]
    rate = engine.sample_rate
    pcm = await asyncio.to_thread(_join_chunks, chunks, rate)
    voices = list(dict.fromkeys(chunk.voice for chunk in chunks)) or [engine.voice]
    return Response(
        wav_bytes(AudioFrame(pcm, rate)),
        media_type="audio/wav",
        headers={"X-Voice": ",".join(voices)},
    )


def _join_chunks(chunks: list[SpeechChunk], rate: int) -> PCM:
    """Resample every chunk to ``rate`` and join them (blocking: soxr)."""
    parts = [resample(chunk.pcm, chunk.sample_rate, rate) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)
