"""API keys: named, scoped, revocable credentials, of which only a hash is stored.

A key reads ``pk_<id>_<secret>``: ``pk_`` tells it apart from a JWT (which
starts with ``eyJ``), ``<id>`` (16 hex digits) names its row and is not
secret, ``<secret>`` (43 URL-safe characters, 256 random bits) is shown once,
at creation. The row keeps ``sha256:`` and the hex digest of the secret: with
256 random bits a fast hash is safe (no dictionary to try), and checks compare
digests in constant time.

``ApiKeyRepository`` keeps what it read in a small per-process cache for
``cache_ttl_s`` (default 5 s): a key revoked by another worker stops working
there within that time (at once in the worker that revoked it). It records
``last_used_at`` at most once per ``touch_interval_s`` per key and process, so
a busy key costs one write a minute, not one per request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import ApiKey, aware, utcnow

KEY_PREFIX = "pk_"
"""What every API key starts with."""
SCOPES = ("calls", "admin")
"""``calls``: create rooms and sessions, place calls; ``admin``: everything."""
_KEY_RE = re.compile(r"^pk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_HASH_SCHEME = "sha256:"


class ApiKeyError(ValueError):
    """Base of the API key errors (a ``ValueError``: bad input, not a server fault)."""


class ScopeError(ApiKeyError):
    """A scope that does not exist, or no scope at all."""


def is_api_key(token: str | None) -> bool:
    """Whether a bearer value is meant as an API key (by its prefix; not whether it is valid)."""
    return bool(token) and str(token).startswith(KEY_PREFIX)


def parse_key(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key; None otherwise."""
    match = _KEY_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    """What the store keeps of a key's secret."""
    return _HASH_SCHEME + hashlib.sha256(secret.encode()).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes deduplicated in a stable order; ``ScopeError`` for an unknown or empty set."""
    wanted = {s.strip().lower() for s in scopes if s.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ScopeError(f"unknown scope(s): {', '.join(sorted(unknown))}; use {', '.join(SCOPES)}")
    if not wanted:
        raise ScopeError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in wanted)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown of a key: everything but its secret and hash."""

    id: str
    name: str
    scopes: tuple[str, ...]
    max_calls: int | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None

    def allows(self, scope: str) -> bool:
        """Whether the key grants ``scope`` (``admin`` grants every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ISO 8601 times."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "max_calls": self.max_calls,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        """From a row."""
        created = aware(row.created_at)
        assert created is not None
        return cls(
            id=row.id,
            name=row.name,
            scopes=tuple(s for s in SCOPES if s in (row.scopes or [])),
            max_calls=row.max_calls,
            created_at=created,
            last_used_at=aware(row.last_used_at),
            revoked_at=aware(row.revoked_at),
        )


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: its description and the full key, to be shown once."""

    info: KeyInfo
    key: str

    def __repr__(self) -> str:  # never the secret, even in a traceback or a debugger
        return f"IssuedKey(info={self.info!r}, key='{KEY_PREFIX}{self.info.id}_***')"


@dataclass(slots=True)
class _Cached:
    info: KeyInfo | None
    """None: no such key (cached too, so unknown ids cost one read per ``cache_ttl_s``)."""
    secret_hash: str
    expires: float
    touched: float


class ApiKeyRepository:
    """Create, list, revoke and verify API keys (see the module docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_ttl_s: float = 5.0,
        touch_interval_s: float = 60.0,
        max_cached: int = 1024,
    ) -> None:
        self._sessions = sessions
        self.cache_ttl_s = cache_ttl_s
        self.touch_interval_s = touch_interval_s
        self.max_cached = max_cached
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    async def create(
        self, name: str, scopes: Iterable[str], *, max_calls: int | None = None
    ) -> IssuedKey:
        """A new key; the returned ``key`` is the only time its secret exists outside the caller.

        ``ScopeError`` for unknown scopes, ``ValueError`` for an empty name or a
        ``max_calls`` below 1.
        """
        name = name.strip()
        if not name or len(name) > 200:
            raise ApiKeyError("a key needs a name of 1 to 200 characters")
        if max_calls is not None and max_calls < 1:
            raise ApiKeyError("max_calls must be at least 1 (or unset)")
        chosen = normalize_scopes(scopes)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        row = ApiKey(
            id=key_id,
            name=name,
            secret_hash=hash_secret(secret),
            scopes=list(chosen),
            max_calls=max_calls,
            created_at=utcnow(),
        )
        async with self._sessions.begin() as db:
            db.add(row)
        return IssuedKey(KeyInfo.of(row), f"{KEY_PREFIX}{key_id}_{secret}")

    async def list_keys(self, *, include_revoked: bool = True) -> list[KeyInfo]:
        """Every key, oldest first."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        async with self._sessions() as db:
            return [KeyInfo.of(row) for row in await db.scalars(query)]

    async def get(self, key_id: str) -> KeyInfo | None:
        """A key by id (revoked ones too; from the cache when fresh)."""
        entry = await self._lookup(key_id)
        return entry.info

    async def revoke(self, key_id: str) -> KeyInfo | None:
        """Revoke a key (idempotent: the first revocation time stays); None if no such key."""
        async with self._sessions.begin() as db:
            row = await db.get(ApiKey, key_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            info = KeyInfo.of(row)
        self._cache.pop(key_id, None)
        return info

    async def verify(self, token: str) -> KeyInfo | None:
        """The key ``token`` is, when it is well formed, known, matches and is not revoked."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        entry = await self._lookup(key_id)
        presented = hash_secret(secret)
        # Compare even for an unknown id (against a dummy), so timing tells nothing more.
        matches = hmac.compare_digest(presented.encode(), (entry.secret_hash or "-").encode())
        if entry.info is None or not matches or entry.info.revoked:
            return None
        now = time.monotonic()
        if now - entry.touched >= self.touch_interval_s:
            entry.touched = now
            await self._touch(key_id)
        return entry.info

    def forget(self, key_id: str | None = None) -> None:
        """Drop one key (or every key) from this process's cache."""
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)

    async def _lookup(self, key_id: str) -> _Cached:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            self._cache.move_to_end(key_id)
            return cached
        async with self._sessions() as db:
            row = await db.get(ApiKey, key_id) if len(key_id) <= 32 else None
        fresh = _Cached(
            info=KeyInfo.of(row) if row is not None else None,
            secret_hash=row.secret_hash if row is not None else "",
            expires=now + self.cache_ttl_s,
            # a key read again keeps its last touch: the interval is per process, not per read
            touched=cached.touched if cached is not None else float("-inf"),
        )
        self._cache[key_id] = fresh
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return fresh

    async def _touch(self, key_id: str) -> None:
        async with self._sessions.begin() as db:
            await db.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
            )
