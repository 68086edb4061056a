"""REST utilities: text chat, speech-to-text of an upload, text-to-speech to WAV.

Each is rate limited per client address and API key (``chat`` and ``voice``
buckets). STT, TTS and a chat that starts a new session need the ``calls``
scope where API keys are required; continuing a chat needs its session token.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from agent.tts import TTS, SpeechChunk
from media.decode import decode_audio
from media.frames import PCM, PIPELINE_RATE, AudioFrame, FloatPCM, int16_to_float
from media.resample import resample
from media.wav import wav_bytes
from signaling.access import guard
from signaling.openapi import BINARY, error_responses, raw_body
from signaling.state import ApiError, State
from signaling.tokens import bearer

router = APIRouter(prefix="/v1")

MAX_UPLOAD_SECONDS = 120.0
MAX_TTS_SECONDS = 180.0
"""The most audio one TTS request may produce: 2,000 characters of prose take about
130 s; text that phonemizes to far more (random letters are spelled out) stops here
with 413 instead of holding the synthesis thread for a minute."""


class ChatIn(BaseModel):
    """Body of ``POST /v1/chat/text``."""

    text: str = Field(..., min_length=1, max_length=4000)
    session_id: str | None = Field(None, max_length=64)


class ActionResultOut(BaseModel):
    """The last action a turn's tools completed."""

    tool: str = Field(description="The tool that acted (``play_track``, an HTTP tool).")
    action: str = Field(description="What it did (``play``, ``pause``, ``like``, ...).")
    data: dict[str, Any] = Field(
        description="Its result: for the music tools the platform and the track or "
        "playlist, and the search tier that found it."
    )


class ChatOut(BaseModel):
    """The answer of ``POST /v1/chat/text``."""

    session_id: str
    session_token: str | None = Field(description="A new session's token (null: continued).")
    reply: str
    action_result: ActionResultOut | None = Field(
        description="The last action the turn completed (null: none)."
    )


class TtsIn(BaseModel):
    """Body of ``POST /v1/voice/tts``."""

    text: str = Field(..., min_length=1, max_length=2000)


@router.post(
    "/chat/text",
    response_model=ChatOut,
    responses=error_responses(400, 401, 403, 413, 429, 502, 503),
)
async def chat_text(
    body: ChatIn,
    request: Request,
    st: State,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """One text turn with the agent.

    Without ``session_id`` a new session starts (an API key with the ``calls``
    scope where keys are required) and its token is returned; to continue a
    session (text or voice), pass its id and its token as Bearer.

    The agent may call its tools first, as on a call (``tools`` in its YAML,
    the music tools); ``action_result`` is the last action the turn completed,
    ``{"tool", "action", "data"}``, or null.
    """
    token: str | None = None
    if body.session_id is not None:
        await st.limits.hit("chat", address=st.limits.client_address(request))
        st.tokens.verify_session(bearer(authorization), body.session_id)
        answer = await st.chats.reply(body.text, body.session_id)
    else:
        principal = await guard(st, request, authorization, bucket="chat")
        answer = await st.chats.reply(body.text, key_id=principal.key_id)
        token = st.tokens.mint_session(answer.session_id)[0]
    return {
        "session_id": answer.session_id,
        "session_token": token,
        "reply": answer.reply,
        "action_result": answer.action_result,
    }


_STT_BODY = raw_body(
    {
        **{
            media: BINARY
            for media in (
                "audio/wav",
                "audio/ogg",
                "audio/mpeg",
                "audio/webm",
                "audio/flac",
                "application/octet-stream",
            )
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
    },
    description=(
        "The audio file, as the raw body (any container PyAV reads) or as the "
        f"``file`` part of a form; at most {MAX_UPLOAD_SECONDS:.0f} s of audio."
    ),
)


@router.post(
    "/voice/stt",
    responses=error_responses(400, 401, 403, 413, 415, 429, 502, 503),
    openapi_extra=_STT_BODY,
)
async def stt(
    request: Request, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Transcribe an uploaded audio file (WAV, OGG, MP3, WebM...; raw body or multipart)."""
    await guard(st, request, authorization, bucket="voice")
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


@router.post(
    "/voice/tts",
    response_class=Response,
    responses={
        200: {"description": "16-bit mono WAV.", "content": {"audio/wav": BINARY}},
        **error_responses(400, 401, 403, 413, 429, 502, 503),
    },
)
async def tts(
    body: TtsIn,
    request: Request,
    st: State,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Synthesize text to a 16-bit mono WAV at the default voice's own rate.

    Chunks from another voice (a fallback provider) are resampled to that
    rate; ``X-Voice`` names the voices that actually spoke, in order.
    """
    await guard(st, request, authorization, bucket="voice")
    engine = st.models.tts
    chunks = await _synthesize_bounded(engine, body.text, request)
    rate = engine.sample_rate
    pcm = await asyncio.to_thread(_join_chunks, chunks, rate)
    voices = list(dict.fromkeys(chunk.voice for chunk in chunks)) or [engine.voice]
    return Response(
        wav_bytes(AudioFrame(pcm, rate)),
        media_type="audio/wav",
        headers={"X-Voice": ",".join(voices)},
    )


async def _synthesize_bounded(engine: TTS, text: str, request: Request) -> list[SpeechChunk]:
    """Every chunk of ``text``, stopping when the audio passes ``MAX_TTS_SECONDS`` (413) or
    the client has gone (closing the stream cancels the synthesis that is left)."""
    chunks: list[SpeechChunk] = []
    seconds = 0.0
    async with contextlib.aclosing(engine.stream(text)) as speech:
        async for chunk in speech:
            chunks.append(chunk)
            seconds += chunk.pcm.size / chunk.sample_rate
            if seconds > MAX_TTS_SECONDS:
                raise ApiError(
                    413,
                    "speech_too_long",
                    f"the text makes more than {MAX_TTS_SECONDS:.0f} s of speech; send less",
                )
            if await request.is_disconnected():
                raise ApiError(499, "client_gone", "the client closed the request")
    return chunks


def _join_chunks(chunks: list[SpeechChunk], rate: int) -> PCM:
    """Resample every chunk to ``rate`` and join them (blocking: soxr)."""
    parts = [resample(chunk.pcm, chunk.sample_rate, rate) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)
