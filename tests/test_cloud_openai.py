"""Cloud adapters on their real SDKs, against the loopback OpenAI / Groq API server.

``OpenAICompatibleLLM`` (``openai`` SDK) and ``GroqLLM`` (``groq`` SDK) run
the same tests; ``GroqWhisperSTT`` uploads real WAV files. Everything goes
over loopback HTTP to ``tests.vendors.openai_api``, which speaks the
vendors' documented wire format and injects their failures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import numpy as np
import pytest

from agent.errors import ProviderAuthError, ProviderError, ProviderTimeoutError, RateLimitedError
from agent.llm import (
    ChatMessage,
    GenerationSettings,
    LLMDelta,
    TextDelta,
    ToolCall,
    ToolCallAssembler,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.providers.cloud_errors import parse_retry_after, status_error, vendor_code
from agent.providers.groq_llm import GroqLLM, GroqSettings
from agent.providers.groq_stt import GroqSTTSettings, GroqWhisperSTT
from agent.providers.openai_llm import OpenAICompatibleLLM, OpenAISettings
from media.errors import AudioFormatError
from media.frames import PIPELINE_RATE, FloatPCM, float_to_int16
from media.wav import read_wav
from tests.vendors.openai_api import (
    CHAT,
    TRANSCRIPTIONS,
    BreakStream,
    ChatReply,
    Hang,
    HttpFault,
    OpenAIAPIServer,
    ScriptedToolCall,
    Segment,
    TranscriptionReply,
)

pytest.importorskip("openai", reason="cloud extra not installed (scripts/setup.sh cloud)")
pytest.importorskip("groq", reason="cloud extra not installed (scripts/setup.sh cloud)")

API_KEY = "sk-test-9f8e7d6c5b4a-KEEP-ME-SECRET"
PROMPT = "my account number is 4481 2290"
"""Stands for private caller speech: never to appear in an error."""

CloudLLM = OpenAICompatibleLLM | GroqLLM


@pytest.fixture
async def vendor() -> AsyncIterator[OpenAIAPIServer]:
    async with OpenAIAPIServer(API_KEY) as server:
        yield server


@pytest.fixture(params=["openai", "groq"])
def vendor_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def build(
    vendor_name: str, vendor: OpenAIAPIServer
) -> AsyncIterator[Callable[..., CloudLLM]]:
    """Makes adapters of the vendor under test (closed after the test)."""
    made: list[CloudLLM] = []

    def make(*, api_key: str = API_KEY, timeout_s: float = 2.0) -> CloudLLM:
        llm: CloudLLM
        if vendor_name == "openai":
            llm = OpenAICompatibleLLM(
                OpenAISettings(api_key, base_url=vendor.openai_base_url, timeout_s=timeout_s)
            )
        else:
            llm = GroqLLM(GroqSettings(api_key, base_url=vendor.groq_base_url, timeout_s=timeout_s))
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.aclose()


@pytest.fixture
def llm(build: Callable[..., CloudLLM]) -> CloudLLM:
    return build()


def ask(text: str = "When do you open?") -> list[ChatMessage]:
    return [ChatMessage("system", "You are a shop assistant."), ChatMessage("user", text)]


async def collect(
    llm: CloudLLM,
    messages: Sequence[ChatMessage] | None = None,
    settings: GenerationSettings | None = None,
    tools: Sequence[ToolSpec] = (),
) -> list[LLMDelta]:
    return [d async for d in llm.stream(messages or ask(), settings or GenerationSettings(), tools)]


async def failure(
    llm: CloudLLM, messages: Sequence[ChatMessage] | None = None
) -> tuple[ProviderError, list[LLMDelta]]:
    """The error a stream ends with, and what it yielded before."""
    got: list[LLMDelta] = []
    try:
        async for delta in llm.stream(messages or ask(), GenerationSettings()):
            got.append(delta)
    except ProviderError as exc:
        return exc, got
    pytest.fail(f"the stream ended without an error after {got}")


def texts(deltas: Sequence[LLMDelta]) -> list[str]:
    return [d.text for d in deltas if isinstance(d, TextDelta)]


# ------------------------------------------------------------------ streaming


async def test_text_streams_in_pieces_then_one_usage(
    llm: CloudLLM, vendor: OpenAIAPIServer, vendor_name: str
) -> None:
    reply = "Sure, we open at nine tomorrow morning."
    vendor.queue_chat(ChatReply(reply, prompt_tokens=42))
    deltas = await collect(llm)
    pieces = texts(deltas)
    assert len(pieces) == len(reply.split()) and "".join(pieces) == reply
    usage = [d for d in deltas if isinstance(d, UsageDelta)]
    assert usage == [UsageDelta(vendor_name, llm.model, 42, len(pieces))]
    assert deltas[-1] is usage[0]


async def test_reply_is_scripted_from_the_user_message(
    llm: CloudLLM, vendor: OpenAIAPIServer
) -> None:
    vendor.chat = ChatReply(lambda said: f"You said: {said}")
    assert "".join(texts(await collect(llm, ask("two pizzas")))) == "You said: two pizzas"


async def test_tool_call_fragments_assemble(llm: CloudLLM, vendor: OpenAIAPIServer) -> None:
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    vendor.queue_chat(
        ChatReply(
            "",
            tool_calls=[
                ScriptedToolCall("get_weather", arguments, "call_w1"),
                ScriptedToolCall("hang_up", "{}", "call_h2"),
            ],
        )
    )
    weather = ToolSpec(
        "get_weather",
        "Current weather of a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    tools = [weather, ToolSpec("hang_up", "End the call")]
    deltas = await collect(llm, tools=tools)
    fragments = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert len(fragments) > 3 and not texts(deltas)
    assembler = ToolCallAssembler()
    for fragment in fragments:
        assembler.feed(fragment)
    assert assembler.calls() == [
        ToolCall("call_w1", "get_weather", arguments),
        ToolCall("call_h2", "hang_up", "{}"),
    ]
    assert vendor.recorded(CHAT)[-1].json["tools"] == [t.to_openai() for t in tools]


async def test_history_and_settings_go_out_in_the_wire_shape(
    llm: CloudLLM, vendor: OpenAIAPIServer, vendor_name: str
) -> None:
    call = ToolCall("call_7", "lookup_order", '{"order": "A17"}')
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Where is my order?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", '{"status": "shipped"}', tool_call_id="call_7", name="lookup_order"),
        ChatMessage("assistant", "It shipped yesterday.", interrupted=True),
        ChatMessage("user", "Thanks."),
    ]
    settings = GenerationSettings(max_tokens=64, temperature=0.2, top_p=0.8, seed=11)
    await collect(llm, messages, settings)
    request = vendor.recorded(CHAT)[-1]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.json
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my order?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order": "A17"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "It shipped yesterday."},
        {"role": "user", "content": "Thanks."},
    ]
    assert body["model"] == llm.model
    assert body["stream"] is True
    assert (body["max_completion_tokens"], body["temperature"], body["top_p"], body["seed"]) == (
        64,
        0.2,
        0.8,
        11,
    )
    assert not {"tools", "max_tokens", "repeat_penalty", "frequency_penalty"} & body.keys()
    if vendor_name == "openai":
        assert request.path == "/v1/chat/completions"
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert request.path == "/openai/v1/chat/completions"
        assert "stream_options" not in body


async def test_reply_limit_under_its_old_name_for_older_servers(vendor: OpenAIAPIServer) -> None:
    llm = OpenAICompatibleLLM(
        OpenAISettings(API_KEY, base_url=vendor.openai_base_url, max_tokens_param="max_tokens")
    )
    try:
        deltas = await collect(llm, settings=GenerationSettings(max_tokens=3, seed=None))
    finally:
        await llm.aclose()
    body = vendor.recorded(CHAT)[-1].json
    assert body["max_tokens"] == 3 and "max_completion_tokens" not in body and "seed" not in body
    assert len(texts(deltas)) == 3  # the server cut the reply at the limit


async def test_usage_falls_back_to_counting_chunks(
    llm: CloudLLM, vendor: OpenAIAPIServer, vendor_name: str
) -> None:
    vendor.queue_chat(ChatReply("One two three.", report_usage=False))
    deltas = await collect(llm)
    assert deltas[-1] == UsageDelta(vendor_name, llm.model, 0, 3)


def test_settings_never_show_the_key() -> None:
    for settings in (
        OpenAISettings(API_KEY),
        GroqSettings(API_KEY),
        GroqSTTSettings(API_KEY),
    ):
        assert API_KEY not in repr(settings)
    with pytest.raises(ValueError, match="timeout_s"):
        GroqSettings(API_KEY, timeout_s=0)
    with pytest.raises(ValueError, match="api_key"):
        OpenAISettings("")


# --------------------------------------------------------------------- errors


async def test_wrong_key_fails_for_good_and_is_never_repeated(
    build: Callable[..., CloudLLM], vendor: OpenAIAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-7a6b5c4d3e2f-DO-NOT-LEAK"
    error, got = await failure(build(api_key=wrong), ask(PROMPT))
    assert type(error) is ProviderAuthError and not error.retryable and not got
    assert "HTTP 401: authentication failed (check the API key)" in str(error)
    for text in (str(error), repr(error.args), caplog.text):
        assert wrong not in text and API_KEY not in text
    assert PROMPT not in str(error)
    # The vendor's exception (its message repeats the key) is not chained either.
    assert error.__cause__ is None and error.__suppress_context__
    assert vendor.recorded(CHAT)[-1].completed


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("2", 2.0, 2.0),
        ("in 30 s, as an HTTP date", 20.0, 30.0),
    ],
    ids=["seconds", "http-date"],
)
async def test_rate_limit_says_when_to_retry(
    llm: CloudLLM, vendor: OpenAIAPIServer, retry_after: str, low: float, high: float
) -> None:
    if retry_after.startswith("in 30 s"):  # dated when the test runs, not when it is collected
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    vendor.queue_chat(ChatReply(fault=HttpFault(429, retry_after)))
    error, _ = await failure(llm)
    assert isinstance(error, RateLimitedError) and error.retryable
    assert error.retry_after_s is not None and low <= error.retry_after_s <= high
    assert "HTTP 429" in str(error) and "req_loopback_" in str(error)


async def test_exhausted_quota_is_not_retryable(llm: CloudLLM, vendor: OpenAIAPIServer) -> None:
    vendor.queue_chat(ChatReply(fault=HttpFault(429, code="insufficient_quota")))
    error, _ = await failure(llm)
    assert type(error) is ProviderError and not error.retryable
    assert "quota exhausted" in str(error)


async def test_forbidden_key_is_an_auth_failure(llm: CloudLLM, vendor: OpenAIAPIServer) -> None:
    vendor.queue_chat(ChatReply(fault=HttpFault(403, code="permission_denied")))
    error, _ = await failure(llm)
    assert type(error) is ProviderAuthError and not error.retryable
    assert "HTTP 403: authentication failed (check the API key) (permission_denied)" in str(error)


@pytest.mark.parametrize("status", [500, 503, 409])
async def test_server_errors_are_retryable(
    llm: CloudLLM, vendor: OpenAIAPIServer, status: int
) -> None:
    vendor.queue_chat(ChatReply(fault=HttpFault(status)))
    error, _ = await failure(llm)
    assert type(error) is ProviderError and error.retryable
    assert f"HTTP {status}: server error" in str(error)


async def test_request_time_out_status_is_a_time_out(
    llm: CloudLLM, vendor: OpenAIAPIServer
) -> None:
    vendor.queue_chat(ChatReply(fault=HttpFault(408)))
    error, _ = await failure(llm)
    assert type(error) is ProviderTimeoutError and error.retryable
    assert "HTTP 408: request timed out" in str(error)


@pytest.mark.parametrize(("status", "words"), [(400, "request rejected"), (404, "not found")])
async def test_rejected_requests_fail_for_good_without_the_prompt(
    llm: CloudLLM, vendor: OpenAIAPIServer, status: int, words: str
) -> None:
    vendor.queue_chat(ChatReply(fault=HttpFault(status)))
    error, _ = await failure(llm, ask(PROMPT))
    assert type(error) is ProviderError and not error.retryable
    assert f"HTTP {status}" in str(error) and words in str(error)
    assert PROMPT not in str(error)


@pytest.mark.parametrize("after_headers", [True, False], ids=["stalled-stream", "no-answer"])
async def test_hang_times_out_within_the_configured_time(
    build: Callable[..., CloudLLM], vendor: OpenAIAPIServer, after_headers: bool
) -> None:
    llm = build(timeout_s=0.3)
    vendor.queue_chat(ChatReply(fault=Hang(after_headers)))
    started = time.monotonic()
    error, got = await failure(llm)
    elapsed = time.monotonic() - started
    assert isinstance(error, ProviderTimeoutError) and error.retryable and not got
    assert 0.25 <= elapsed < 1.5
    await asyncio.wait_for(vendor.recorded(CHAT)[-1].disconnected.wait(), 1.0)


@pytest.mark.parametrize("clean", [False, True], ids=["connection-cut", "body-ended-early"])
async def test_stream_broken_mid_reply_is_retryable(
    llm: CloudLLM, vendor: OpenAIAPIServer, clean: bool
) -> None:
    reply = "Our opening hours are nine to five on weekdays."
    vendor.queue_chat(ChatReply(reply, fault=BreakStream(4, clean=clean)))
    error, got = await failure(llm)
    assert type(error) is ProviderError and error.retryable
    pieces = texts(got)
    assert pieces and reply.startswith("".join(pieces)) and "".join(pieces) != reply
    assert not any(isinstance(d, UsageDelta) for d in got)


# --------------------------------------------------------------- cancellation


async def test_closing_the_stream_closes_the_connection(
    llm: CloudLLM, vendor: OpenAIAPIServer
) -> None:
    vendor.queue_chat(ChatReply("word " * 50, tokens_per_s=20))
    stream = llm.stream(ask(), GenerationSettings())
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()
    request = vendor.recorded(CHAT)[-1]
    await asyncio.wait_for(request.disconnected.wait(), 1.0)
    assert not request.completed


@pytest.mark.parametrize("fault", [None, Hang(after_headers=False)], ids=["mid-reply", "waiting"])
async def test_cancelling_the_consumer_closes_the_connection(
    llm: CloudLLM, vendor: OpenAIAPIServer, fault: Hang | None
) -> None:
    vendor.queue_chat(ChatReply("word " * 50, tokens_per_s=20, fault=fault))
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.stream(ask(), GenerationSettings()):
            started.set()

    task = asyncio.create_task(consume())
    if fault is None:
        await asyncio.wait_for(started.wait(), 1.0)
    else:
        await asyncio.wait_for(vendor.wait_for_requests(CHAT), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = vendor.recorded(CHAT)[-1]
    await asyncio.wait_for(request.disconnected.wait(), 1.0)
    assert not request.completed


async def test_closed_adapter_refuses_requests(llm: CloudLLM) -> None:
    await llm.aclose()
    await llm.aclose()  # idempotent
    error, _ = await failure(llm)
    assert not error.retryable and "closed" in str(error)


# -------------------------------------------------- the server's other answers


async def test_non_streamed_answers_parse_in_both_sdks(vendor: OpenAIAPIServer) -> None:
    from groq import AsyncGroq
    from openai import AsyncOpenAI

    vendor.chat = ChatReply("Fine, thanks.", tool_calls=[ScriptedToolCall("hang_up", "{}")])
    openai_client = AsyncOpenAI(api_key=API_KEY, base_url=vendor.openai_base_url, max_retries=0)
    groq_client = AsyncGroq(api_key=API_KEY, base_url=vendor.groq_base_url, max_retries=0)
    try:
        a = await openai_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}]
        )
        b = await groq_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}]
        )
    finally:
        await openai_client.close()
        await groq_client.close()
    for answer in (a, b):
        choice = answer.choices[0].model_dump()
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "Fine, thanks."
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "hang_up"
        assert answer.usage is not None and answer.usage.completion_tokens > 0


def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "later", "retry-after": "9"}) == 9.0
    assert parse_retry_after({"retry-after": " 7 "}) == 7.0
    assert parse_retry_after({"Retry-After": "4"}) == 4.0, "names match in any case"
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after({"retry-after": past}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({"retry-after": "inf"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_raw_values() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("12", now=now) == 12.0
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sat Mar  1 12:00:30 2025", now=now) == 30.0, "asctime is UTC"
    assert parse_retry_after("Sat, 01 Mar 2025 11:00:00 GMT", now=now) == 0.0
    for unreadable in ("", "  ", "soon", "-1", "nan", None):
        assert parse_retry_after(unreadable, now=now) is None


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable", "words"),
    [
        (
            401,
            None,
            ProviderAuthError,
            False,
            "HTTP 401: authentication failed (check the API key)",
        ),
        (
            403,
            None,
            ProviderAuthError,
            False,
            "HTTP 403: authentication failed (check the API key)",
        ),
        (429, None, RateLimitedError, True, "HTTP 429: rate limited"),
        (429, {"error": {"code": "insufficient_quota"}}, ProviderError, False, "quota exhausted"),
        (401, {"detail": {"status": "quota_exceeded"}}, ProviderError, False, "quota exhausted"),
        (408, None, ProviderTimeoutError, True, "HTTP 408: request timed out"),
        (409, None, ProviderError, True, "HTTP 409: server error"),
        (502, None, ProviderError, True, "HTTP 502: server error"),
        (404, None, ProviderError, False, "HTTP 404: not found"),
        (422, None, ProviderError, False, "HTTP 422: request rejected"),
    ],
)
def test_status_mapping_is_one_table_for_every_vendor(
    status: int, body: object, kind: type[ProviderError], retryable: bool, words: str
) -> None:
    headers = {"Retry-After": "5", "X-Request-Id": "req_42"}
    error = status_error("vendor", status, headers=headers, body=body)
    assert type(error) is kind and error.retryable is retryable
    assert error.provider == "vendor"
    assert words in str(error) and str(error).endswith("[request req_42]")
    if isinstance(error, RateLimitedError):
        assert error.retry_after_s == 5.0


def test_status_messages_show_only_plain_tokens() -> None:
    body = {"error": {"code": f"bad key {API_KEY}", "type": "invalid_request_error"}}
    error = status_error("vendor", 400, headers={"x-request-id": PROMPT}, body=body)
    assert str(error) == "vendor: HTTP 400: request rejected (invalid_request_error)"
    # Both vendors' body shapes, decoded or raw; free text is never a code.
    assert vendor_code({"error": {"code": "invalid_api_key", "type": "x"}}) == "invalid_api_key"
    assert vendor_code({"code": None, "type": "server_error"}) == "server_error"
    assert vendor_code(b'{"detail": {"status": "voice_not_found"}}') == "voice_not_found"
    assert vendor_code('{"detail": [{"msg": "field required"}]}') is None
    assert vendor_code(b"<html>Bad Gateway</html>") is None
    assert vendor_code({"message": PROMPT}) is None


# ------------------------------------------------------------------ Groq STT


def speech(seconds: float = 1.0) -> FloatPCM:
    """A voiced tone, loud enough to be sent."""
    t = np.arange(round(seconds * PIPELINE_RATE)) / PIPELINE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture
async def make_stt(vendor: OpenAIAPIServer) -> AsyncIterator[Callable[..., GroqWhisperSTT]]:
    made: list[GroqWhisperSTT] = []

    def make(api_key: str = API_KEY, **options: object) -> GroqWhisperSTT:
        settings = GroqSTTSettings(api_key, base_url=vendor.groq_base_url, **options)  # type: ignore[arg-type]
        made.append(GroqWhisperSTT(settings))
        return made[-1]

    yield make
    for stt in made:
        await stt.aclose()


async def test_groq_transcribes_a_final(
    make_stt: Callable[..., GroqWhisperSTT], vendor: OpenAIAPIServer
) -> None:
    stt = make_stt(prompt="Parley, Margherita")
    vendor.queue_transcription(
        TranscriptionReply.of("Two Margherita pizzas, please.", avg_logprob=-0.2, latency_s=0.05)
    )
    audio = speech(1.5)
    result = await stt.transcribe(audio)
    assert result.text == "Two Margherita pizzas, please."
    assert (result.provider, result.model) == ("groq", "whisper-large-v3-turbo")
    assert result.confidence == pytest.approx(math.exp(-0.2))
    assert result.audio_s == pytest.approx(1.5) and result.processing_s >= 0.05
    request = vendor.recorded(TRANSCRIPTIONS)[-1]
    assert request.path == "/openai/v1/audio/transcriptions"
    assert request.form == {
        "model": "whisper-large-v3-turbo",
        "response_format": "verbose_json",
        "temperature": "0.0",
        "language": "en",
        "prompt": "Parley, Margherita",
    }
    name, data = request.files["file"]
    uploaded = read_wav(data)
    assert name == "turn.wav" and uploaded.sample_rate == PIPELINE_RATE
    assert np.array_equal(uploaded.samples, float_to_int16(audio))


async def test_groq_drops_segments_whisper_rates_as_noise(
    make_stt: Callable[..., GroqWhisperSTT], vendor: OpenAIAPIServer
) -> None:
    stt = make_stt()
    vendor.queue_transcription(
        TranscriptionReply((Segment(" Book a table.", -0.3), Segment(" Thank you.", -1.6, 0.9)))
    )
    result = await stt.transcribe(speech())
    assert result.text == "Book a table."
    assert result.confidence == pytest.approx(math.exp(-0.3))


async def test_groq_plain_json_has_full_confidence(
    make_stt: Callable[..., GroqWhisperSTT], vendor: OpenAIAPIServer
) -> None:
    stt = make_stt(response_format="json", language=None)
    vendor.queue_transcription(TranscriptionReply.of("Yes."))
    result = await stt.transcribe(speech())
    assert (result.text, result.confidence) == ("Yes.", 1.0)
    assert "language" not in vendor.recorded(TRANSCRIPTIONS)[-1].form


async def test_groq_skips_silence_and_refuses_partials(
    make_stt: Callable[..., GroqWhisperSTT], vendor: OpenAIAPIServer
) -> None:
    stt = make_stt()
    for quiet in (np.zeros(PIPELINE_RATE, np.float32), speech(0.05)):
        result = await stt.transcribe(quiet)
        assert (result.text, result.confidence, result.provider) == ("", 0.0, "groq")
    with pytest.raises(ProviderError) as caught:
        await stt.transcribe(speech(), partial=True)
    assert not caught.value.retryable and "partial" in str(caught.value)
    assert not vendor.recorded(TRANSCRIPTIONS)
    with pytest.raises(AudioFormatError):
        await stt.transcribe(float_to_int16(speech()))  # type: ignore[arg-type]
    served = make_stt(serve_partials=True)
    assert (await served.transcribe(speech(), partial=True)).text == "Hello there."


@pytest.mark.parametrize(
    ("fault", "kind", "retryable"),
    [
        (HttpFault(401), ProviderAuthError, False),
        (HttpFault(429, "7"), RateLimitedError, True),
        (HttpFault(500), ProviderError, True),
        (Hang(), ProviderTimeoutError, True),
    ],
    ids=["401", "429", "500", "hang"],
)
async def test_groq_stt_errors_are_mapped(
    make_stt: Callable[..., GroqWhisperSTT],
    vendor: OpenAIAPIServer,
    fault: HttpFault | Hang,
    kind: type[ProviderError],
    retryable: bool,
) -> None:
    stt = make_stt(timeout_s=0.3, prompt=PROMPT)
    vendor.queue_transcription(TranscriptionReply(fault=fault))
    with pytest.raises(ProviderError) as caught:
        await stt.transcribe(speech())
    error = caught.value
    assert type(error) is kind and error.retryable is retryable
    assert API_KEY not in str(error) and PROMPT not in str(error)
    if isinstance(error, RateLimitedError):
        assert error.retry_after_s == 7.0
