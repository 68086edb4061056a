"""Prometheus metrics of the server, fed by session events."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.events import AgentEvent, InterruptionEvent, MetricsEvent
from agent.fallback import BreakerState, CircuitBreaker, FallbackStats
from agent.platforms.search import SearchTier, TrackSearch
from agent.pricing import PriceTable, stage_uses
from agent.runtime import AgentModels
from media.sip.server import SipStats

_END_REASONS = frozenset(
    {
        "hung up",
        "idle timeout",
        "no audio",
        "room deleted",
        "server shutdown",
        "offer failed",
        "ice failed",
        "connection failed",
        "peer disconnected",
    }
)
"""End reasons counted under their own label; the rest fold into a few classes."""


def end_reason_label(reason: str | None) -> str:
    """A bounded metric label for a call's end reason (``"no audio"`` -> ``no_audio``).

    Reasons with details (``session closed (...)``, ``audio-in failed (ValueError)``)
    and the transports' ``"<kind> closed"`` fold into ``session_closed``,
    ``task_failed`` and ``caller_left``; anything else is ``other``.
    """
    text = (reason or "").strip()
    if text in _END_REASONS:
        return text.replace(" ", "_")
    if text.startswith("session closed"):
        return "session_closed"
    if " failed (" in text:
        return "task_failed"
    if text.endswith(" closed") and " " not in text.removesuffix(" closed"):
        return "caller_left"
    return "other"


_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_SEARCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Music search tiers: sub-millisecond (in-process) to a slow platform API."""

_STORE_GAUGES = {"writes_pending": "Durable writes queued, not yet applied"}
_STORE_COUNTERS = {
    "writes_applied": "Durable writes applied",
    "write_retries": "Durable write attempts that failed transiently and were retried",
    "writes_dropped": "Durable writes refused because the writer's queue was full",
    "writes_parked": "Durable writes that failed permanently and were parked (not retried)",
    "tts_cache_hot_hits": "TTS phrase lookups answered by the hot tier",
    "tts_cache_sql_hits": "TTS phrase lookups answered by the SQL tier within the budget",
    "tts_cache_misses": "TTS phrase lookups that missed (including slow and shed ones)",
    "tts_cache_slow_lookups": "TTS phrase lookups past their time budget",
    "tts_cache_lookups_shed": "TTS phrase lookups not started: too many in flight",
    "tts_cache_sql_errors": "TTS phrase cache SQL reads and use updates that failed",
    "tts_cache_writes": "TTS phrases written to the SQL tier",
    "tts_cache_writes_dropped": "TTS phrases not cached: the write-behind queue was full",
    "tts_cache_write_errors": "TTS phrase SQL writes that failed",
    "tts_cache_purged": "TTS phrase rows purged from the SQL tier",
}


class _StoreCollector(Collector):
    """Reads the store's counters at scrape time (the store knows nothing of Prometheus)."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        values = self._stats()
        for name, doc in _STORE_GAUGES.items():
            if name in values:
                yield GaugeMetricFamily(f"parley_store_{name}", doc, value=values[name])
        for name, doc in _STORE_COUNTERS.items():
            if name in values:
                yield CounterMetricFamily(f"parley_store_{name}", doc, value=values[name])


class _RateLimitCollector(Collector):
    """Reads the rate limits' counters (``RateLimits.stats``) at scrape time."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        values = self._stats()
        refused = CounterMetricFamily(
            "parley_rate_limited", "Requests refused by a rate limit (429)", labels=["bucket"]
        )
        for name, n in sorted(values.items()):
            if name.startswith("refused_"):
                refused.add_metric([name.removeprefix("refused_")], n)
        yield refused
        yield CounterMetricFamily(
            "parley_rate_limit_storage_errors",
            "Rate limit checks let through because their storage (Redis) failed",
            value=values.get("storage_errors", 0),
        )


PROVIDER_LABELS_MAX = 32
"""Distinct provider label values; later ones (and unsafe names) are exported as ``other``."""
_SAFE_LABEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


class _ProviderLabels:
    """Bounded provider label values: safe tokens, at most ``PROVIDER_LABELS_MAX`` of them.

    Provider names come from configuration, yet a label must never grow the
    series without bound: a name that is not a short safe token, or one past
    the cap, is counted under ``other``.
    """

    OTHER = "other"

    def __init__(self, limit: int = PROVIDER_LABELS_MAX) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, provider: str) -> str:
        name = provider.strip().lower()
        if name in self._seen:
            return name
        if not _SAFE_LABEL.fullmatch(name) or len(self._seen) >= self._limit:
            return self.OTHER
        self._seen.add(name)
        return name


RTP_COUNTERS = ("packets_received", "packets_sent", "lost", "late", "concealed", "garbage")
"""RTP counters of SIP calls exported as ``parley_rtp_packets_total{kind=...}``."""


class _SipCollector(Collector):
    """Reads the SIP server's and the RTP sessions' counters at scrape time."""

    def __init__(self, sip: Callable[[], SipStats], rtp: Callable[[], Mapping[str, int]]) -> None:
        self._sip = sip
        self._rtp = rtp

    def collect(self) -> Iterator[Metric]:
        stats = self._sip()
        responses = CounterMetricFamily(
            "parley_sip_responses", "SIP responses sent, by status code", labels=["code"]
        )
        for code, n in sorted(stats.responses_sent.items()):
            responses.add_metric([str(code)], n)
        yield responses
        requests = CounterMetricFamily(
            "parley_sip_requests", "SIP requests received, by method", labels=["method"]
        )
        for method, n in sorted(stats.requests_received.items()):
            requests.add_metric([method], n)
        yield requests
        malformed = CounterMetricFamily(
            "parley_sip_malformed", "Malformed SIP messages, by handling", labels=["handling"]
        )
        malformed.add_metric(["dropped"], stats.malformed_dropped)
        malformed.add_metric(["answered"], stats.malformed_answered)
        yield malformed
        rtp = self._rtp()
        packets = CounterMetricFamily(
            "parley_rtp_packets", "RTP packets of SIP calls, by kind", labels=["kind"]
        )
        for kind in RTP_COUNTERS:
            packets.add_metric([kind], rtp.get(kind, 0))
        yield packets


class _FallbackCollector(Collector):
    """Reads the provider chains' counters and breaker states at scrape time."""

    def __init__(
        self,
        stats: FallbackStats,
        breakers: Callable[[], Mapping[tuple[str, str], BreakerState]],
    ) -> None:
        self._stats = stats
        self._breakers = breakers

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        failures = CounterMetricFamily(
            "parley_provider_failures",
            "Failed or skipped provider attempts, by stage, provider and kind",
            labels=["stage", "provider", "kind"],
        )
        for (stage, provider, kind), n in sorted(stats.failures.items()):
            failures.add_metric([stage, provider, kind.value], n)
        yield failures
        for name, counter, text in (
            ("parley_provider_retries", stats.retries, "Retries on the same provider"),
            (
                "parley_provider_fallbacks",
                stats.fallbacks,
                "Requests a provider took over after earlier ones failed",
            ),
            (
                "parley_provider_reroutes",
                stats.reroutes,
                "TTS input streams moved off a provider before any audio "
                "(the rest of the chain spoke them)",
            ),
        ):
            family = CounterMetricFamily(name, text, labels=["stage", "provider"])
            for (stage, provider), n in sorted(counter.items()):
                family.add_metric([stage, provider], n)
            yield family
        exhausted = CounterMetricFamily(
            "parley_provider_exhausted",
            "Requests no provider of the chain served (the caller heard the apology)",
            labels=["stage"],
        )
        for stage, n in sorted(stats.exhausted.items()):
            exhausted.add_metric([stage], n)
        yield exhausted
        state = GaugeMetricFamily(
            "parley_provider_circuit_open",
            "1 while a provider's circuit breaker keeps requests away (open or half-open)",
            labels=["stage", "provider"],
        )
        for (stage, provider), value in sorted(self._breakers().items()):
            state.add_metric([stage, provider], 0 if value is BreakerState.CLOSED else 1)
        yield state


def breaker_states(models: AgentModels) -> dict[tuple[str, str], BreakerState]:
    """Each chained provider's breaker state, by (stage, provider)."""
    out: dict[tuple[str, str], BreakerState] = {}
    for stage, provider in (("stt", models.stt), ("llm", models.llm), ("tts", models.tts)):
        inner = getattr(provider, "inner", provider)  # the phrase cache wraps the TTS
        breakers: Mapping[str, CircuitBreaker] = getattr(inner, "breakers", {})
        for name, breaker in breakers.items():
            out[(stage, name)] = breaker.state
    return out


class ServerMetrics:
    """The server's metrics in their own registry (safe with several apps per process).

    Turns' usage is counted by stage and provider; with ``prices`` each priced
    stage's cost estimate is added to ``parley_cost_usd_total`` as well.
    """

    def __init__(self, prices: PriceTable | None = None) -> None:
        self._prices = prices
        self._provider = _ProviderLabels()
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("parley_active_calls", "Calls in progress", registry=r)
        self.calls = Counter("parley_calls", "Calls started", ["transport"], registry=r)
        self.calls_ended = Counter(
            "parley_calls_ended",
            "Calls ended, by transport and reason (see end_reason_label)",
            ["transport", "reason"],
            registry=r,
        )
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
        self.provider_requests = Counter(
            "parley_provider_requests",
            "Turns served by a provider, by stage (one per stage a turn used)",
            ["stage", "provider"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "parley_llm_tokens",
            "LLM tokens by provider and kind (prompt, completion)",
            ["provider", "kind"],
            registry=r,
        )
        self.stt_audio_seconds = Counter(
            "parley_stt_audio_seconds",
            "Caller audio sent to final transcription, by provider",
            ["provider"],
            registry=r,
        )
        self.tts_characters = Counter(
            "parley_tts_characters",
            "Characters sent to synthesis, by provider",
            ["provider"],
            registry=r,
        )
        self.cost_usd = Counter(
            "parley_cost_usd",
            "Estimated cost in USD from the price table, by stage and provider (priced stages)",
            ["stage", "provider"],
            registry=r,
        )
        self.music_search_seconds = Histogram(
            "parley_music_search_seconds",
            "Time spent in each tier a music search asked (hot, sql, library, platform)",
            ["tier"],
            buckets=_SEARCH_BUCKETS,
            registry=r,
        )
        self.music_searches = Counter(
            "parley_music_searches",
            "Music searches by the tier that answered them",
            ["tier"],
            registry=r,
        )

    def watch_sip(self, sip: Callable[[], SipStats], rtp: Callable[[], Mapping[str, int]]) -> None:
        """Export SIP responses by code and RTP packet counters (lost, late...)."""
        self.registry.register(_SipCollector(sip, rtp))

    def watch_fallback(
        self,
        stats: FallbackStats,
        breakers: Callable[[], Mapping[tuple[str, str], BreakerState]],
    ) -> None:
        """Export the provider chains' failures, retries, fallbacks and breaker states."""
        self.registry.register(_FallbackCollector(stats, breakers))

    def watch_store(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the store's counters (``Store.stats``) as ``parley_store_*`` metrics."""
        self.registry.register(_StoreCollector(stats))

    def watch_rate_limits(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the rate limits' refusals by bucket and their storage failures."""
        self.registry.register(_RateLimitCollector(stats))

    def music_search(self, result: TrackSearch) -> None:
        """Count a music search by the tier that served it and time each tier it asked."""
        for tier in SearchTier:
            ms = result.timings_ms.get(tier.value)
            if ms is not None:
                self.music_search_seconds.labels(tier.value).observe(ms / 1000.0)
        self.music_searches.labels(result.tier.value).inc()

    def call_ended(self, transport: str, reason: str | None) -> None:
        """Count a call that ended (``CallManager``'s ``on_end``)."""
        self.calls_ended.labels(transport, end_reason_label(reason)).inc()

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
            if event.usage:
                self._count_usage(event)
        elif isinstance(event, InterruptionEvent):
            if event.phase == "confirmed":
                self.barge_ins.inc()
            elif event.phase == "resumed":
                self.false_interruptions.inc()

    def _count_usage(self, event: MetricsEvent) -> None:
        for use in stage_uses(event.usage):
            provider = self._provider(use.provider)
            self.provider_requests.labels(use.stage, provider).inc()
            if use.stage == "llm":
                self.llm_tokens.labels(provider, "prompt").inc(use.prompt_tokens)
                self.llm_tokens.labels(provider, "completion").inc(use.completion_tokens)
            elif use.stage == "stt":
                self.stt_audio_seconds.labels(provider).inc(use.audio_s)
            else:
                self.tts_characters.labels(provider).inc(use.chars)
            if self._prices is not None:
                cost = self._prices.stage_cost(use)
                if cost is not None:
                    self.cost_usd.labels(use.stage, provider).inc(cost)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
