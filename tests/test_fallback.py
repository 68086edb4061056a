"""Fallback chains, retries and circuit breakers (``agent.fallback``) over in-memory fakes.

Time limits are small (a few hundred ms) and asserted only with generous
margins; breaker cool-downs run on an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TypeVar

import numpy as np
import pytest

from agent import errors
from agent.errors import ConfigError, ProviderError, ProviderTimeoutError, RateLimitedError
from agent.fallback import (
    AllProvidersFailedError,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    FailureKind,
    FallbackInputStream,
    FallbackLLM,
    FallbackStats,
    FallbackSTT,
    FallbackTTS,
    InputState,
    Limits,
    ProviderAuthError,
    RetryPolicy,
    StreamingFallbackTTS,
    classify_failure,
    failures,
    fallback_tts,
)
from agent.llm import (
    ChatMessage,
    GenerationSettings,
    LLMDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.providers.cloud_errors import status_error
from agent.stt import Transcript
from agent.tts import SpeechChunk, StreamingTTS, TTSInputStream
from media.frames import FloatPCM
from tests.fakes import FakeSTT, FakeTTS, ScriptedLLM, tone

T = TypeVar("T")

MARGIN = 2.0
"""Seconds of slack on every upper time bound (a loaded 2-core machine)."""

MESSAGES = (ChatMessage("user", "my secret prompt"),)
SETTINGS = GenerationSettings()
AUDIO = np.zeros(16000, np.float32)
SECRET = "vendor body echoing my secret prompt"
"""Text of injected vendor errors: must never reach a log or an AllProvidersFailedError."""

FAST = RetryPolicy(max_attempts=2, backoff_s=0.01, backoff_max_s=0.02, jitter=0.0)
ONCE = RetryPolicy(max_attempts=1)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def retryable(provider: str = "groq") -> ProviderError:
    return ProviderError(provider, f"HTTP 503: {SECRET}", retryable=True)


async def collect(llm: FallbackLLM) -> list[LLMDelta]:
    return [d async for d in llm.stream(MESSAGES, SETTINGS)]


def text_of(deltas: Sequence[LLMDelta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds (fails the test past ``within``)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (polling counters the fakes own)
            await asyncio.sleep(0.001)


async def drain(stream: AsyncIterator[T]) -> tuple[list[T], Exception | None]:
    """Everything ``stream`` yields, and the exception that ended it, if any."""
    items: list[T] = []
    try:
        async for item in stream:
            items.append(item)
    except Exception as exc:
        return items, exc
    return items, None


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read afresh (keeps mypy from narrowing across clock moves)."""
    return breaker.state


# ------------------------------------------------------------------ breaker


def test_breaker_opens_after_n_failures_then_probes_once_after_cooldown() -> None:
    clock = FakeClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        "llm/groq",
        BreakerSettings(failure_threshold=3, cooldown_s=10),
        clock=clock,
        on_transition=lambda _b, old, new, _k: transitions.append((old, new)),
    )
    for i in range(3):
        permit = breaker.acquire()
        assert permit is not None
        assert breaker.failed(permit, FailureKind.TIMEOUT) is (i == 2)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.acquire() is None
    assert breaker.retry_at == pytest.approx(clock.now + 10)
    clock.advance(9.9)
    assert breaker.acquire() is None
    clock.advance(0.2)
    assert state(breaker) is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe is not None and probe.probe
    assert breaker.acquire() is None, "only one probe at a time"
    breaker.succeeded(probe)
    assert state(breaker) is BreakerState.CLOSED
    assert transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_breaker_success_resets_the_tally_and_rejections_do_not_count() -> None:
    breaker = CircuitBreaker("x", BreakerSettings(failure_threshold=2), clock=FakeClock())
    for kind in (FailureKind.UNAVAILABLE, FailureKind.REJECTED, FailureKind.REJECTED):
        permit = breaker.acquire()
        assert permit is not None
        breaker.failed(permit, kind)
    assert breaker.consecutive_failures == 1
    permit = breaker.acquire()
    assert permit is not None
    breaker.succeeded(permit)
    assert breaker.consecutive_failures == 0
    permit = breaker.acquire()
    assert permit is not None
    breaker.failed(permit, FailureKind.RATE_LIMITED)
    assert state(breaker) is BreakerState.CLOSED


def test_breaker_failed_probe_reopens_with_a_longer_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "x", BreakerSettings(failure_threshold=1, cooldown_s=10, max_cooldown_s=15), clock=clock
    )
    permit = breaker.acquire()
    assert permit is not None
    breaker.failed(permit, FailureKind.TIMEOUT)
    clock.advance(10)
    probe = breaker.acquire()
    assert probe is not None
    assert breaker.failed(probe, FailureKind.TIMEOUT) is True
    assert state(breaker) is BreakerState.OPEN
    clock.advance(14)
    assert state(breaker) is BreakerState.OPEN, "cool-down doubled, capped at 15 s"
    clock.advance(1)
    assert state(breaker) is BreakerState.HALF_OPEN


def test_breaker_auth_failure_opens_at_once_for_the_auth_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "x", BreakerSettings(failure_threshold=5, cooldown_s=10, auth_cooldown_s=300), clock=clock
    )
    permit = breaker.acquire()
    assert permit is not None
    assert breaker.failed(permit, FailureKind.AUTH) is True
    assert breaker.last_failure is FailureKind.AUTH
    clock.advance(299)
    assert state(breaker) is BreakerState.OPEN
    clock.advance(1)
    assert state(breaker) is BreakerState.HALF_OPEN


def test_breaker_ignores_stale_verdicts_and_a_released_probe_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("x", BreakerSettings(failure_threshold=1, cooldown_s=1), clock=clock)
    slow = breaker.acquire()
    fast = breaker.acquire()
    assert slow is not None and fast is not None
    breaker.failed(fast, FailureKind.UNAVAILABLE)
    breaker.succeeded(slow)  # began before the circuit opened: no say on it
    assert state(breaker) is BreakerState.OPEN
    clock.advance(1)
    probe = breaker.acquire()
    assert probe is not None
    breaker.released(probe)  # the probe was cancelled: someone else may probe
    assert breaker.available
    assert breaker.acquire() is not None


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="idle_s"):
        Limits(idle_s=0)


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_s=0.1, multiplier=2, backoff_max_s=0.3, jitter=0.5)
    assert [policy.backoff(n, 0.0) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert policy.backoff(2, 1.0) == pytest.approx(0.1)


def test_failures_are_classified_by_type() -> None:
    assert classify_failure(RateLimitedError("g", "x", 1.0)) is FailureKind.RATE_LIMITED
    assert classify_failure(ProviderTimeoutError("g", "x")) is FailureKind.TIMEOUT
    assert classify_failure(TimeoutError()) is FailureKind.TIMEOUT
    assert classify_failure(retryable()) is FailureKind.UNAVAILABLE
    assert classify_failure(ConnectionResetError()) is FailureKind.UNAVAILABLE
    assert classify_failure(ProviderError("g", "HTTP 400")) is FailureKind.REJECTED
    assert classify_failure(ProviderAuthError("g", "HTTP 401")) is FailureKind.AUTH
    assert ProviderAuthError is errors.ProviderAuthError is failures.ProviderAuthError
    assert not ProviderAuthError("g", "HTTP 403").retryable
    assert classify_failure(KeyError("bug")) is FailureKind.ERROR


# ---------------------------------------------------------------------- LLM


def llm_chain(
    primary: ScriptedLLM,
    secondary: ScriptedLLM | None = None,
    *,
    limits: Limits | None = None,
    policy: RetryPolicy = FAST,
    breaker: BreakerSettings | None = None,
    clock: FakeClock | None = None,
) -> FallbackLLM:
    chain = [("groq", primary)] + ([("local", secondary)] if secondary else [])
    return FallbackLLM(
        chain,
        limits or Limits(llm_first_token_s=1.0, budget_s=5.0),
        policy,
        breaker=breaker,
        clock=clock or FakeClock(),
    )


async def test_llm_model_names_the_chain() -> None:
    llm = llm_chain(ScriptedLLM(model="llama-3.3-70b"), ScriptedLLM(model="smollm2"))
    assert llm.model == "groq:llama-3.3-70b|local:smollm2"
    assert set(llm.breakers) == {"groq", "local"}


async def test_llm_first_token_time_out_falls_back_within_the_limit() -> None:
    slow, local = ScriptedLLM(["Too late."]), ScriptedLLM(["Hello there."], model="smollm2")
    slow.gate.clear()
    llm = llm_chain(slow, local, limits=Limits(llm_first_token_s=0.2, budget_s=5.0))
    start = time.monotonic()
    deltas = await collect(llm)
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 0.2 + MARGIN
    assert text_of(deltas) == "Hello there."
    assert slow.cancelled == 1 and slow.active == 0, "the slow stream was closed"
    assert len(slow.requests) == 1, "a provider that used its whole limit is not retried"
    assert llm.stats.failures[("llm", "groq", FailureKind.TIMEOUT)] == 1
    assert llm.stats.fallbacks[("llm", "local")] == 1


async def test_llm_retryable_failure_is_retried_on_the_same_provider() -> None:
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_next(0, retryable())
    llm = llm_chain(primary, local)
    assert text_of(await collect(llm)) == "From groq."
    assert len(primary.requests) == 2 and not local.requests
    assert llm.stats.retries[("llm", "groq")] == 1
    assert llm.stats.attempts[("llm", "groq")] == 2


async def test_llm_rate_limit_retry_after_is_honoured_when_it_fits() -> None:
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_next(0, RateLimitedError("groq", f"HTTP 429: {SECRET}", retry_after_s=0.15))
    llm = llm_chain(primary, local, limits=Limits(llm_first_token_s=1.0, budget_s=5.0))
    start = time.monotonic()
    assert text_of(await collect(llm)) == "From groq."
    assert time.monotonic() - start >= 0.14
    assert len(primary.requests) == 2 and not local.requests


async def test_llm_rate_limit_retry_after_past_the_budget_moves_on_at_once() -> None:
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_next(0, RateLimitedError("groq", "HTTP 429", retry_after_s=30.0))
    llm = llm_chain(primary, local, limits=Limits(llm_first_token_s=1.0, budget_s=5.0))
    start = time.monotonic()
    assert text_of(await collect(llm)) == "From local."
    assert time.monotonic() - start < MARGIN
    assert len(primary.requests) == 1
    assert llm.stats.failures[("llm", "groq", FailureKind.RATE_LIMITED)] == 1


async def test_llm_auth_failure_is_not_retried_opens_the_breaker_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_at_token, primary.error = 0, ProviderAuthError("groq", f"HTTP 401: {SECRET}")
    llm = llm_chain(primary, local)
    with caplog.at_level(logging.DEBUG, logger="agent.fallback"):
        for _ in range(3):
            assert text_of(await collect(llm)) == "From local."
    assert len(primary.requests) == 1, "not retried, then skipped while the circuit is open"
    assert state(llm.breakers["groq"]) is BreakerState.OPEN
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    auth = [r for r in warnings if "auth" in r.getMessage()]
    assert len(auth) == 2, "one failure line and one circuit-opened line, not one per request"
    assert SECRET not in caplog.text and "secret prompt" not in caplog.text
    assert llm.stats.failures[("llm", "groq", FailureKind.CIRCUIT_OPEN)] == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": {"type": "invalid_request_error", "code": "invalid_api_key"}}),
        (403, b'{"detail": {"status": "missing_permissions"}}'),
    ],
    ids=["401-openai-body", "403-elevenlabs-body"],
)
async def test_llm_adapter_auth_error_opens_the_breaker_at_once(status: int, body: object) -> None:
    # What every cloud adapter raises for a refused key: their shared status mapping.
    error = status_error("groq", status, headers={"x-request-id": "req_1"}, body=body)
    assert type(error) is ProviderAuthError and not error.retryable
    assert classify_failure(error) is FailureKind.AUTH
    clock = FakeClock()
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_next(0, error)
    settings = BreakerSettings(failure_threshold=5, cooldown_s=1, auth_cooldown_s=60)
    llm = llm_chain(primary, local, breaker=settings, clock=clock)
    assert text_of(await collect(llm)) == "From local."
    assert len(primary.requests) == 1, "not retried"
    assert state(llm.breakers["groq"]) is BreakerState.OPEN, "at once, far below the threshold"
    assert llm.stats.failures[("llm", "groq", FailureKind.AUTH)] == 1
    clock.advance(30)
    assert text_of(await collect(llm)) == "From local."
    assert len(primary.requests) == 1, "skipped for the auth cool-down, not the short one"
    clock.advance(31)
    assert text_of(await collect(llm)) == "From groq.", "the probe after it succeeds"
    assert state(llm.breakers["groq"]) is BreakerState.CLOSED


async def test_llm_rejected_request_falls_back_without_retry_or_breaker_verdict() -> None:
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_next(0, ProviderError("groq", "HTTP 400: request rejected"))
    llm = llm_chain(primary, local, breaker=BreakerSettings(failure_threshold=1))
    assert text_of(await collect(llm)) == "From local."
    assert len(primary.requests) == 1
    assert state(llm.breakers["groq"]) is BreakerState.CLOSED


async def test_llm_breaker_skips_a_failing_provider_then_a_probe_closes_it() -> None:
    clock = FakeClock()
    primary, local = ScriptedLLM(["From groq."]), ScriptedLLM(["From local."])
    primary.fail_at_token, primary.error = 0, retryable()
    llm = llm_chain(
        primary,
        local,
        policy=ONCE,
        breaker=BreakerSettings(failure_threshold=2, cooldown_s=30),
        clock=clock,
    )
    for _ in range(2):
        assert text_of(await collect(llm)) == "From local."
    assert state(llm.breakers["groq"]) is BreakerState.OPEN
    assert text_of(await collect(llm)) == "From local."
    assert len(primary.requests) == 2, "skipped while open"
    clock.advance(30)
    assert state(llm.breakers["groq"]) is BreakerState.HALF_OPEN
    primary.fail_at_token = None  # the provider recovered
    assert text_of(await collect(llm)) == "From groq."
    assert state(llm.breakers["groq"]) is BreakerState.CLOSED
    assert llm.stats.transitions[("llm/groq", BreakerState.HALF_OPEN, BreakerState.CLOSED)] == 1


async def test_llm_failure_after_text_is_raised_and_not_repeated() -> None:
    primary = ScriptedLLM(["One two three four."], fail_at_token=2, error=retryable())
    local = ScriptedLLM(["From local."])
    llm = llm_chain(primary, local)
    deltas, error = await drain(llm.stream(MESSAGES, SETTINGS))
    assert text_of(deltas) == "One two"
    assert isinstance(error, ProviderError) and error.provider == "groq"
    assert not local.requests and len(primary.requests) == 1
    assert llm.stats.failures[("llm", "groq", FailureKind.UNAVAILABLE)] == 1


async def test_llm_a_tool_call_commits_the_reply_to_its_provider() -> None:
    call = ToolCallDelta(0, id="c1", name="lookup", arguments="{}")
    primary = ScriptedLLM([[call, "Done."]], fail_at_token=1, error=retryable())
    local = ScriptedLLM(["From local."])
    deltas, error = await drain(llm_chain(primary, local).stream(MESSAGES, SETTINGS))
    assert deltas == [call] and isinstance(error, ProviderError)
    assert not local.requests, "the tool call is not made twice"


async def test_llm_tools_are_offered_when_some_provider_takes_them() -> None:
    local = ScriptedLLM()
    local.supports_tools = False
    assert llm_chain(ScriptedLLM(), local).supports_tools
    assert not FallbackLLM([("local", local)]).supports_tools


async def test_llm_idle_limit_ends_a_stalled_stream_after_its_first_token() -> None:
    class Stalling:
        model = "stall"
        closed = False

        async def stream(
            self,
            messages: Sequence[ChatMessage],
            settings: GenerationSettings,
            tools: Sequence[ToolSpec] = (),
        ) -> AsyncGenerator[LLMDelta, None]:
            try:
                yield TextDelta("Hello")
                await asyncio.Event().wait()
            finally:
                self.closed = True

        async def aclose(self) -> None:
            """Nothing to release."""

    stalling = Stalling()
    llm = FallbackLLM([("groq", stalling)], Limits(idle_s=0.2))
    deltas, error = await drain(llm.stream(MESSAGES, SETTINGS))
    assert isinstance(error, ProviderTimeoutError)
    assert text_of(deltas) == "Hello"
    assert stalling.closed


async def test_llm_usage_is_passed_through_or_reported_for_the_chain_entry() -> None:
    usage = UsageDelta("groq", "llama-3.3-70b", prompt_tokens=12, completion_tokens=3)
    call = ToolCallDelta(0, id="c1", name="lookup", arguments="{}")
    reporting = ScriptedLLM([["Sure.", call, usage]])
    deltas = await collect(llm_chain(reporting))
    assert [d for d in deltas if isinstance(d, UsageDelta)] == [usage]
    assert call in deltas

    silent = ScriptedLLM(["Hi."], model="smollm2")
    deltas = await collect(FallbackLLM([("local", silent)]))
    assert deltas[-1] == UsageDelta("local", "smollm2")


async def test_llm_all_providers_failing_raises_a_typed_error_without_vendor_text() -> None:
    primary = ScriptedLLM(fail_at_token=0, error=ProviderAuthError("groq", SECRET))
    local = ScriptedLLM(fail_at_token=0, error=retryable("local"))
    llm = llm_chain(primary, local)
    with pytest.raises(AllProvidersFailedError) as info:
        await collect(llm)
    error = info.value
    assert not error.retryable and isinstance(error, ProviderError)
    assert error.kinds == {"groq": FailureKind.AUTH, "local": FailureKind.UNAVAILABLE}
    assert [f.attempts for f in error.failures] == [1, 2]
    assert error.failures[0].error == "ProviderAuthError"
    assert SECRET not in str(error)
    assert error.__cause__ is None and error.__context__ is None
    assert llm.stats.exhausted["llm"] == 1


async def test_llm_budget_bounds_the_whole_request() -> None:
    first, second = ScriptedLLM(), ScriptedLLM()
    first.gate.clear()
    second.gate.clear()
    llm = llm_chain(first, second, limits=Limits(llm_first_token_s=0.5, budget_s=0.7))
    start = time.monotonic()
    with pytest.raises(AllProvidersFailedError) as info:
        await collect(llm)
    assert 0.69 <= time.monotonic() - start < 0.7 + MARGIN
    kinds = info.value.kinds
    assert kinds["groq"] is FailureKind.TIMEOUT
    # The second provider gets what is left of the budget (nothing, on a very loaded machine).
    assert kinds["local"] in (FailureKind.TIMEOUT, FailureKind.NO_BUDGET)
    assert first.active == 0 and second.active == 0
    # Cut by the budget, not by its own limit: no verdict on it.
    assert llm.breakers["local"].consecutive_failures == 0
    assert llm.breakers["groq"].consecutive_failures == 1


async def test_llm_cancellation_during_backoff_returns_promptly() -> None:
    primary = ScriptedLLM(fail_at_token=0, error=retryable())
    slow_retry = RetryPolicy(max_attempts=2, backoff_s=30, backoff_max_s=30, jitter=0)
    llm = FallbackLLM([("groq", primary)], Limits(budget_s=100), slow_retry)
    task = asyncio.create_task(collect(llm))
    await wait_until(lambda: primary.failed == 1)
    await asyncio.sleep(0.01)  # into the backoff sleep
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < MARGIN
    assert primary.active == 0 and len(primary.requests) == 1


async def test_llm_cancellation_closes_the_provider_stream_in_flight() -> None:
    primary = ScriptedLLM()
    primary.gate.clear()
    llm = llm_chain(primary, policy=ONCE, breaker=BreakerSettings(failure_threshold=1))
    task = asyncio.create_task(collect(llm))
    await wait_until(lambda: primary.active == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert primary.cancelled == 1 and primary.active == 0
    assert state(llm.breakers["groq"]) is BreakerState.CLOSED, "cancelled: no verdict"


async def test_llm_consumer_closing_mid_reply_closes_the_provider_stream() -> None:
    primary = ScriptedLLM(["One two three four."])
    llm = llm_chain(primary)
    stream = llm.stream(MESSAGES, SETTINGS)
    assert await anext(stream) == TextDelta("One")
    await stream.aclose()
    assert primary.cancelled == 1 and primary.active == 0
    assert llm.breakers["groq"].consecutive_failures == 0


async def test_llm_aclose_closes_every_provider_and_refuses_requests() -> None:
    primary, local = ScriptedLLM(), ScriptedLLM()
    llm = llm_chain(primary, local)
    await llm.aclose()
    await llm.aclose()
    assert primary.closed and local.closed
    with pytest.raises(ProviderError, match="closed"):
        await collect(llm)


async def test_stats_can_be_shared_between_chains() -> None:
    stats = FallbackStats()
    llm = FallbackLLM([("local", ScriptedLLM())], stats=stats)
    stt = FallbackSTT([("local", FakeSTT())], stats=stats)
    await collect(llm)
    await stt.transcribe(AUDIO)
    assert stats.served == {("llm", "local"): 1, ("stt", "local"): 1}


# ---------------------------------------------------------------------- STT


class NamedSTT:
    """A ``FakeSTT`` whose transcripts name their provider and model."""

    def __init__(self, provider: str, model: str, fake: FakeSTT) -> None:
        self.provider, self.model, self.fake = provider, model, fake
        self.sample_rate = fake.sample_rate

    async def transcribe(self, audio: FloatPCM, *, partial: bool = False) -> Transcript:
        result = await self.fake.transcribe(audio, partial=partial)
        return dataclasses.replace(result, provider=self.provider, model=self.model)

    async def aclose(self) -> None:
        await self.fake.aclose()


def stt_chain(
    cloud: FakeSTT, local: FakeSTT, limits: Limits | None = None, partials_from: str | None = None
) -> FallbackSTT:
    return FallbackSTT(
        [
            ("groq", NamedSTT("groq", "whisper-large-v3-turbo", cloud)),
            ("local", NamedSTT("local", "tiny.en", local)),
        ],
        limits or Limits(stt_transcript_s=1.0),
        FAST,
        partials_from=partials_from,
        clock=FakeClock(),
    )


async def test_stt_final_falls_back_and_keeps_who_served() -> None:
    cloud, local = FakeSTT(["from groq"]), FakeSTT(["from local"])
    cloud.error = ProviderError("groq", "HTTP 400")
    stt = stt_chain(cloud, local)
    result = await stt.transcribe(AUDIO)
    assert (result.text, result.provider, result.model) == ("from local", "local", "tiny.en")
    cloud.error = None
    result = await stt.transcribe(AUDIO)
    assert (result.text, result.provider) == ("from groq", "groq")


async def test_stt_transcript_time_limit_falls_back() -> None:
    cloud, local = FakeSTT(["from groq"]), FakeSTT(["from local"])
    cloud.gate.clear()
    stt = stt_chain(cloud, local, Limits(stt_transcript_s=0.2))
    start = time.monotonic()
    assert (await stt.transcribe(AUDIO)).text == "from local"
    assert time.monotonic() - start < 0.2 + MARGIN
    assert cloud.cancelled == 1


async def test_stt_cancellation_cancels_the_transcription_in_flight() -> None:
    cloud, local = FakeSTT(), FakeSTT()
    cloud.gate.clear()
    stt = stt_chain(cloud, local)
    task = asyncio.create_task(stt.transcribe(AUDIO))
    await wait_until(lambda: len(cloud.calls) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cloud.cancelled == 1 and local.calls == []
    assert stt.stats.failures_of("stt", "groq") == {}


async def test_stt_partials_go_to_the_local_provider() -> None:
    cloud, local = FakeSTT(["final"]), FakeSTT(["partial"])
    stt = stt_chain(cloud, local)
    assert stt.partials_from == "local"
    result = await stt.transcribe(AUDIO, partial=True)
    assert result.provider == "local"
    assert cloud.calls == [] and local.partial_calls == 1
    assert (await stt.transcribe(AUDIO)).provider == "groq"


async def test_stt_partials_from_names_the_entry_and_failures_are_not_rerouted() -> None:
    cloud, local = FakeSTT(["a"]), FakeSTT(["b"])
    stt = stt_chain(cloud, local, partials_from="groq")
    assert (await stt.transcribe(AUDIO, partial=True)).provider == "groq"
    cloud.fail_next(retryable())
    with pytest.raises(AllProvidersFailedError) as info:
        await stt.transcribe(AUDIO, partial=True)
    assert info.value.kinds == {"groq": FailureKind.UNAVAILABLE}
    assert cloud.partial_calls == 2, "a partial is asked once: the next one supersedes it"
    assert local.calls == []


async def test_stt_chain_rejects_unknown_partial_entry_and_mixed_rates() -> None:
    with pytest.raises(ConfigError, match="nope"):
        stt_chain(FakeSTT(), FakeSTT(), partials_from="nope")
    other = FakeSTT()
    other.sample_rate = 8000
    with pytest.raises(ConfigError, match="sample rates"):
        FallbackSTT([("a", FakeSTT()), ("b", other)])


# ---------------------------------------------------------------------- TTS


def tts_limits(first_audio_s: float = 1.0) -> Limits:
    return Limits(tts_first_audio_s=first_audio_s, idle_s=1.0, budget_s=5.0)


async def speak(tts: FallbackTTS | StreamingFallbackTTS, text: str) -> list[SpeechChunk]:
    async with contextlib.aclosing(tts.stream(text)) as chunks:
        return [c async for c in chunks]


async def test_tts_falls_back_before_the_first_audio() -> None:
    cloud = FakeTTS(24000, "cloud-voice", chunks=2)
    local = FakeTTS(22050, "piper-voice", chunks=2)
    cloud.fail_next(0, ProviderError("elevenlabs", "HTTP 400"))
    tts = FallbackTTS([("elevenlabs", cloud), ("local", local)], tts_limits(), FAST)
    assert (tts.sample_rate, tts.voice) == (24000, "cloud-voice")
    chunks = await speak(tts, "Hello.")
    assert {(c.sample_rate, c.voice) for c in chunks} == {(22050, "piper-voice")}
    assert np.array_equal(np.concatenate([c.pcm for c in chunks]), local.audio_for("Hello."))


async def test_tts_first_audio_time_limit_falls_back() -> None:
    cloud, local = FakeTTS(voice="cloud"), FakeTTS(voice="piper")
    cloud.gate.clear()
    tts = FallbackTTS([("elevenlabs", cloud), ("local", local)], tts_limits(0.2), FAST)
    start = time.monotonic()
    chunks = await speak(tts, "Hello.")
    assert time.monotonic() - start < 0.2 + MARGIN
    assert {c.voice for c in chunks} == {"piper"}
    assert cloud.cancelled == 1


async def test_tts_failure_after_audio_is_raised_and_not_repeated() -> None:
    cloud = FakeTTS(voice="cloud", chunks=3, fail_at_chunk=1, error=retryable("elevenlabs"))
    local = FakeTTS(voice="piper")
    tts = FallbackTTS([("elevenlabs", cloud), ("local", local)], tts_limits(), FAST)
    heard, error = await drain(tts.stream("Hello there."))
    assert isinstance(error, ProviderError)
    assert [c.voice for c in heard] == ["cloud"]
    assert local.texts == [], "the text is not spoken again by the fallback"


async def test_fallback_tts_streams_input_only_when_the_first_provider_does() -> None:
    plain = fallback_tts([("local", FakeTTS())])
    assert isinstance(plain, FallbackTTS) and not isinstance(plain, StreamingTTS)
    streaming = fallback_tts([("elevenlabs", StreamingFakeTTS()), ("local", FakeTTS())])
    assert isinstance(streaming, StreamingFallbackTTS) and isinstance(streaming, StreamingTTS)
    with pytest.raises(ConfigError, match="streamed text"):
        StreamingFallbackTTS([("local", FakeTTS())])


class FakeInputStream:
    """The input stream of ``StreamingFakeTTS``: speaks each pushed piece of text."""

    def __init__(self, owner: StreamingFakeTTS) -> None:
        self.owner = owner
        self.pushed: list[str] = []
        self.ended = False
        self.closed = False
        self._queue: asyncio.Queue[SpeechChunk | Exception | None] = asyncio.Queue()

    async def push(self, text: str) -> None:
        if self.owner.push_error is not None:
            raise self.owner.push_error
        self.pushed.append(text)
        if self.owner.speaks:
            audio = tone(0.01 * len(text), 24000)
            self._queue.put_nowait(SpeechChunk(audio, 24000, "cloud", "elevenlabs", text=text))
            if len(self.pushed) == self.owner.fail_after_pushes:
                self._queue.put_nowait(retryable("elevenlabs"))

    async def end(self) -> None:
        self.ended = True
        if self.owner.speaks or self.owner.ends_silently:
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[SpeechChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncGenerator[SpeechChunk, None]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def aclose(self) -> None:
        self.closed = True
        self._queue.put_nowait(None)


class StreamingFakeTTS(FakeTTS):
    """A ``FakeTTS`` that also takes streamed text (``StreamingTTS``)."""

    def __init__(self, *, speaks: bool = True, ends_silently: bool = False) -> None:
        super().__init__(24000, "cloud")
        self.speaks = speaks
        """False: it takes text and never answers (the first-audio limit)."""
        self.ends_silently = ends_silently
        """With ``speaks=False``: its audio ends at ``end()`` without a sound."""
        self.push_error: Exception | None = None
        self.fail_after_pushes: int | None = None
        self.streams: list[FakeInputStream] = []

    def open_stream(self) -> TTSInputStream:
        stream = FakeInputStream(self)
        self.streams.append(stream)
        return stream


async def run_input_stream(
    stream: TTSInputStream, pieces: Sequence[str]
) -> tuple[list[SpeechChunk], BaseException | None]:
    """Push ``pieces`` from one task while another reads the audio, as a reply does."""

    async def write() -> None:
        for piece in pieces:
            await stream.push(piece)
            await asyncio.sleep(0)
        await stream.end()

    heard: list[SpeechChunk] = []
    failure: BaseException | None = None
    writer = asyncio.create_task(write())
    try:
        async for chunk in stream:
            heard.append(chunk)
    except ProviderError as exc:
        failure = exc
    finally:
        await asyncio.gather(writer, return_exceptions=True)
    return heard, failure


REPLY = ["Hello there, ", "how are ", "you today? ", "Fine."]
CHUNKS = ["Hello there, how are you today?", "Fine."]
"""``REPLY`` as the sentence chunker cuts it."""


def streaming_chain(
    cloud: StreamingFakeTTS, local: FakeTTS, first_audio_s: float = 1.0
) -> StreamingFallbackTTS:
    return StreamingFallbackTTS(
        [("elevenlabs", cloud), ("local", local)],
        tts_limits(first_audio_s),
        FAST,
        breaker=BreakerSettings(failure_threshold=1, cooldown_s=60),
        clock=FakeClock(),
    )


async def test_input_stream_speaks_through_the_primary() -> None:
    cloud, local = StreamingFakeTTS(), FakeTTS(voice="piper")
    stream = streaming_chain(cloud, local).open_stream()
    heard, failure = await run_input_stream(stream, REPLY)
    assert failure is None
    assert [c.text for c in heard] == REPLY and {c.voice for c in heard} == {"cloud"}
    assert isinstance(stream, FallbackInputStream) and stream.state is InputState.CLOSED
    assert local.texts == []


async def test_input_stream_reroutes_when_the_primary_fails_before_audio() -> None:
    cloud, local = StreamingFakeTTS(), FakeTTS(voice="piper")
    cloud.push_error = ProviderError("elevenlabs", f"connection lost: {SECRET}", retryable=True)
    tts = streaming_chain(cloud, local)
    heard, failure = await run_input_stream(tts.open_stream(), REPLY)
    assert failure is None
    assert "".join(c.text or "" for c in heard) == "".join(local.texts)
    assert local.texts == CHUNKS
    assert {c.voice for c in heard} == {"piper"}
    assert cloud.streams[0].closed
    assert tts.stats.reroutes[("tts", "elevenlabs")] == 1
    assert state(tts.breakers["elevenlabs"]) is BreakerState.OPEN


async def test_input_stream_reroutes_when_no_audio_comes_in_time() -> None:
    cloud, local = StreamingFakeTTS(speaks=False), FakeTTS(voice="piper")
    tts = streaming_chain(cloud, local, first_audio_s=0.2)
    stream = tts.open_stream()
    start = time.monotonic()
    _, failure = await run_input_stream(stream, REPLY)
    assert failure is None and time.monotonic() - start < 0.2 + MARGIN
    assert local.texts == CHUNKS
    assert cloud.streams[0].pushed == REPLY
    assert tts.stats.failures[("tts", "elevenlabs", FailureKind.TIMEOUT)] == 1


async def test_input_stream_reroutes_when_the_primary_ends_without_a_sound() -> None:
    cloud, local = StreamingFakeTTS(speaks=False, ends_silently=True), FakeTTS(voice="piper")
    heard, failure = await run_input_stream(streaming_chain(cloud, local).open_stream(), REPLY)
    assert failure is None
    assert [c.text for c in heard] == CHUNKS == local.texts


async def test_input_stream_failure_after_audio_ends_the_utterance() -> None:
    cloud, local = StreamingFakeTTS(), FakeTTS(voice="piper")
    cloud.fail_after_pushes = 1
    heard, failure = await run_input_stream(streaming_chain(cloud, local).open_stream(), REPLY)
    assert isinstance(failure, ProviderError)
    assert [c.text for c in heard] == [REPLY[0]]
    assert local.texts == [], "nothing is spoken twice"


async def test_input_stream_starts_on_the_fallback_when_the_primary_circuit_is_open() -> None:
    cloud, local = StreamingFakeTTS(), FakeTTS(voice="piper")
    tts = streaming_chain(cloud, local)
    cloud.push_error = retryable("elevenlabs")
    await run_input_stream(tts.open_stream(), REPLY)  # opens the circuit (threshold 1)
    stream = tts.open_stream()
    assert isinstance(stream, FallbackInputStream) and stream.state is InputState.CHUNKED
    heard, failure = await run_input_stream(stream, REPLY)
    assert failure is None and {c.voice for c in heard} == {"piper"}
    assert len(cloud.streams) == 1


async def test_input_stream_aclose_stops_fallback_synthesis_at_once() -> None:
    cloud, local = StreamingFakeTTS(), FakeTTS(voice="piper")
    cloud.push_error = retryable("elevenlabs")
    local.gate.clear()  # the fallback synthesis hangs
    stream = streaming_chain(cloud, local).open_stream()
    heard: list[SpeechChunk] = []

    async def read() -> None:
        async for chunk in stream:
            heard.append(chunk)

    reader = asyncio.create_task(read())
    for piece in REPLY:
        await stream.push(piece)
    await wait_until(lambda: len(local.texts) == 1)
    await stream.aclose()
    async with asyncio.timeout(MARGIN):
        await reader
    assert heard == [] and local.cancelled == 1
    await stream.push("dropped after close")
