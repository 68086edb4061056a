"""Rate limits per client address and per API key, shared by every worker through Redis.

Four buckets, each with its own limit (``ServerSettings.rate_limit_*``):
``create`` (rooms and sessions), ``offer`` (calls placed), ``chat`` (text
turns) and ``voice`` (the STT and TTS utilities). A request is counted once
for its client address and once for its API key, each against the bucket's
limit; the first exhausted one refuses it with ``RateLimitedError`` (429,
``Retry-After``).

The counters use the ``limits`` library's sliding-window counter: in Redis
(``redis.asyncio`` through ``implementation="redispy"``, keys under the
store's prefix) when ``REDIS_URL`` is set, so workers and machines share
them; in process memory otherwise. If Redis fails, requests are let through
(fail open, a warning every 10 s, counted in ``storage_errors``) and Redis is
not asked again for ``RETRY_REDIS_S``, so an outage costs no latency.

The client address is the peer's, or, when the peer is one of
``PARLEY_TRUSTED_PROXIES``, the nearest address in ``X-Forwarded-For`` that
is not a trusted proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from signaling.settings import ServerSettings

log = logging.getLogger(__name__)

BUCKETS = ("create", "offer", "chat", "voice")
RETRY_REDIS_S = 5.0
"""After a Redis failure, requests pass unchecked this long before Redis is tried again."""
REDIS_TIMEOUT_S = 0.5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimitedError(Exception):
    """A request over a rate limit: answer 429 with ``Retry-After: retry_after_s``."""

    def __init__(self, bucket: str, subject: str, retry_after_s: int) -> None:
        super().__init__(f"too many {bucket} requests for this {subject}; retry later")
        self.bucket = bucket
        self.subject = subject
        """``address`` or ``key``."""
        self.retry_after_s = retry_after_s


def client_address(conn: HTTPConnection, trusted: Sequence[Network] = ()) -> str:
    """The address a request comes from (see the module docstring for proxies)."""
    peer = conn.client.host if conn.client is not None else "unknown"
    if not trusted or not _within(peer, trusted):
        return peer
    forwarded = conn.headers.get("x-forwarded-for", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):  # the right-most hops were added by our own proxies
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed hop after the trusted ones: count it as the proxy
        if not any(address in net for net in trusted):
            return str(address)
    return hops[0] if hops else peer


def _within(host: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


class RateLimits:
    """The server's rate limits (see the module docstring)."""

    def __init__(
        self,
        limits: Mapping[str, str],
        *,
        redis_url: str | None = None,
        prefix: str = "parley:",
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.limits: dict[str, list[RateLimitItem]] = {
            bucket: [] if text.strip().lower() == "off" else parse_many(text)
            for bucket, text in limits.items()
        }
        self.trusted_proxies = tuple(trusted_proxies)
        self.refused: Counter[str] = Counter()
        """Requests refused, by bucket."""
        self.storage_errors = 0
        """Checks let through because the storage (Redis) failed."""
        self._pool: ConnectionPool | None = None
        self._storage: Storage
        if redis_url:
            self._pool = ConnectionPool.from_url(
                redis_url,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),  # fail fast: the request must not wait
                health_check_interval=30,
            )
            # Typed as Any: limits types its options as scalars, the pool is passed through.
            options: dict[str, Any] = {"connection_pool": self._pool}
            self._storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=f"{prefix}limits",
                **options,
            )
        else:
            self._storage = MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._skip_until = 0.0
        self._last_warning = 0.0

    @classmethod
    def from_settings(
        cls, settings: ServerSettings, *, redis_url: str | None, prefix: str
    ) -> RateLimits:
        """The limits the settings ask for, in Redis when ``redis_url`` is set."""
        return cls(
            {
                "create": settings.rate_limit_create,
                "offer": settings.rate_limit_offer,
                "chat": settings.rate_limit_chat,
                "voice": settings.rate_limit_voice,
            },
            redis_url=redis_url,
            prefix=prefix,
            trusted_proxies=settings.trusted_proxy_networks(),
        )

    @property
    def backend(self) -> str:
        """``redis`` or ``memory``."""
        return "redis" if self._pool is not None else "memory"

    def client_address(self, conn: HTTPConnection) -> str:
        """The client address of a request, with this server's trusted proxies."""
        return client_address(conn, self.trusted_proxies)

    async def hit(
        self, bucket: str, *, address: str | None = None, key_id: str | None = None
    ) -> None:
        """Count one request of ``bucket`` for ``address`` and ``key_id`` (each when given).

        Raises ``RateLimitedError`` when one of them is over the limit;
        ``KeyError`` for an unknown bucket.
        """
        items = self.limits[bucket]
        if not items:
            return
        for subject, identity in (("address", address), ("key", key_id)):
            if identity is None:
                continue
            for item in items:
                retry_after = await self._hit(item, bucket, subject, identity)
                if retry_after is not None:
                    self.refused[bucket] += 1
                    raise RateLimitedError(bucket, subject, retry_after)

    async def _hit(self, item: RateLimitItem, *ident: str) -> int | None:
        """None when allowed (or when the storage failed), else seconds to wait."""
        if self._skip_until > time.monotonic():
            return None
        try:
            if await self._limiter.hit(item, *ident):
                return None
            stats = await self._limiter.get_window_stats(item, *ident)
        except (TimeoutError, StorageError, RedisError, OSError) as exc:
            self._failed(exc)
            return None
        wait = stats.reset_time - time.time()
        return max(1, min(math.ceil(wait), item.get_expiry()))

    def _failed(self, exc: Exception) -> None:
        self.storage_errors += 1
        now = time.monotonic()
        self._skip_until = now + RETRY_REDIS_S
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(
                "rate limits: storage failed (%s); requests pass unlimited, retrying in %.0f s",
                type(exc).__name__,
                RETRY_REDIS_S,
            )

    def stats(self) -> dict[str, int]:
        """Counters for metrics: ``refused_<bucket>`` and ``storage_errors``."""
        out = {f"refused_{bucket}": self.refused.get(bucket, 0) for bucket in self.limits}
        out["storage_errors"] = self.storage_errors
        return out

    async def aclose(self) -> None:
        """Stop the memory storage's expiry task, or close the Redis connections."""
        if isinstance(self._storage, MemoryStorage):
            timer = self._storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
                await asyncio.gather(timer, return_exceptions=True)
        if self._pool is not None:
            await self._pool.aclose()
