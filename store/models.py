"""SQLAlchemy 2 models. Times are timezone-aware UTC; ids are unguessable strings."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, overload

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


@overload
def aware(value: dt.datetime) -> dt.datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: dt.datetime | None) -> dt.datetime | None:
    """A stored time as timezone-aware UTC: SQLite hands back naive datetimes, which are
    stored as UTC; aware ones (PostgreSQL) and None pass through."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class User(Base):
    """A caller known to the server (optional: anonymous sessions have none)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    preferred_platform: Mapped[str | None] = mapped_column(String(32))
    """The music platform the agent acts on when a request names none (``spotify``...)."""


class PlatformAccount(Base):
    """A user's linked account on a third-party platform, with its OAuth tokens encrypted
    (``store.crypto``: Fernet under ``PARLEY_TOKEN_KEY``); never a plaintext token."""

    __tablename__ = "platform_accounts"
    __table_args__ = (
        UniqueConstraint("user_id", "platform", name="uq_platform_accounts_user_platform"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    access_token: Mapped[bytes] = mapped_column(LargeBinary)
    """The access token, encrypted."""
    refresh_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The refresh token, encrypted (None: the platform issued none)."""
    expires_at: Mapped[dt.datetime | None]
    """When the access token expires (None: the platform did not say)."""
    scopes: Mapped[list[str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    """What is known of the account on the platform (its user id, display name...)."""
    status: Mapped[str] = mapped_column(String(16), default="connected")
    """``connected``, or ``disconnected`` (its refresh was refused: link it again)."""
    last_sync_at: Mapped[dt.datetime | None]
    """When the user's library was last copied from the platform."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A named, revocable API key of an operator or an application.

    Only a hash of the secret is kept; ``scopes`` lists what it may do (``calls``:
    create rooms and sessions and place calls; ``admin``: everything, including
    other keys and every session). ``max_calls`` caps its concurrent calls (None: the
    server-wide cap only).
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    max_calls: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class RoomRow(Base):
    """A room, shared by every worker (calls in it stay in the worker that answered them)."""

    __tablename__ = "rooms"
    __table_args__ = (Index("ix_rooms_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    """The API key that created it (None: an open, loopback-only server)."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class VoiceSession(Base):
    """One conversation (a call, or a text chat), with its running statistics."""

    __tablename__ = "voice_sessions"
    __table_args__ = (Index("ix_voice_sessions_started_at", "started_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    transport: Mapped[str] = mapped_column(String(32), default="none")
    status: Mapped[str] = mapped_column(String(16), default="active")
    language: Mapped[str] = mapped_column(String(16), default="en")
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    avg_stt_confidence: Mapped[float | None] = mapped_column(Float)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What the transport knows of the call (SIP: the caller's From URI and the Call-ID)."""
    end_reason: Mapped[str | None] = mapped_column(String(120))
    """Why the last call of the session ended (hang-up cause)."""
    key_id: Mapped[str | None] = mapped_column(String(32), index=True)
    """The API key that created the session (None: anonymous, which expires unused)."""

    turns: Mapped[list[Turn]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="Turn.seq"
    )


class Turn(Base):
    """One message of a conversation: the caller's words or the agent's reply."""

    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("session_id", "seq", name="uq_turns_session_seq"),
        Index("ix_turns_started_at", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("voice_sessions.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    """Order within the session, assigned by the writer (idempotent re-delivery)."""
    turn_id: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    heard_text: Mapped[str | None] = mapped_column(Text)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    stt_confidence: Mapped[float | None] = mapped_column(Float)
    latencies: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Per-stage latencies in ms (voice_to_voice_ms, llm_first_token_ms, ...)."""
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What the turn used of each provider (``agent.usage.TurnUsage`` as a dict, with
    ``cost_usd`` and ``cost_by_stage`` from the price table); on agent turns only."""
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None]

    session: Mapped[VoiceSession] = relationship(back_populates="turns")


class InteractionLog(Base):
    """What the agent did with a user input: raw LLM output and the final action."""

    __tablename__ = "interaction_logs"
    __table_args__ = (Index("ix_interaction_logs_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("voice_sessions.id", ondelete="CASCADE"), index=True
    )
    user_input: Mapped[str] = mapped_column(Text)
    raw_llm_output: Mapped[str] = mapped_column(Text)
    final_action: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CacheEntry(Base):
    """The persistent tier of the generic cache."""

    __tablename__ = "cache_entries"
    __table_args__ = (
        UniqueConstraint("namespace", "key", name="uq_cache_namespace_key"),
        Index("ix_cache_expires_at", "expires_at"),
        Index("ix_cache_entries_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    namespace: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512))
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]


class TtsAudio(Base):
    """Synthesized audio of a phrase for one voice (the TTS phrase cache)."""

    __tablename__ = "tts_audio"
    __table_args__ = (
        UniqueConstraint("voice", "text_hash", name="uq_tts_voice_hash"),
        Index("ix_tts_audio_last_used_at", "last_used_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    voice: Mapped[str] = mapped_column(String(128))
    text_hash: Mapped[str] = mapped_column(String(64))
    sample_rate: Mapped[int] = mapped_column(Integer)
    audio: Mapped[bytes] = mapped_column(LargeBinary)
    """Little-endian int16 mono PCM."""
    size_bytes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """``len(audio)``, kept so the purge can sum sizes without reading the audio."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    """Last time the phrase was served or stored (refreshed in batches, write-behind)."""


class LibraryTrack(Base):
    """A track of a user's library on a platform (liked songs), copied by the library sync.

    ``search_text`` is the normalized ``"name artists"`` between spaces
    (``store.library.music_key``), so a spoken query matches whole words with
    ``LIKE '% word %'`` inside the user's rows; ``name_key`` is the normalized
    name alone (ranking: a query that names the whole title wins).
    """

    __tablename__ = "library_tracks"
    __table_args__ = (Index("ix_library_tracks_search", "user_id", "platform", "search_text"),)

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    uri: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(512))
    artists: Mapped[list[str]] = mapped_column(JSON)
    album: Mapped[str | None] = mapped_column(String(512))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    name_key: Mapped[str] = mapped_column(String(512))
    search_text: Mapped[str] = mapped_column(String(1024))
    position: Mapped[int] = mapped_column(Integer, default=0)
    """Order in the platform's list (0: most recently liked)."""
    synced_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LibraryPlaylist(Base):
    """A playlist of a user on a platform, copied by the library sync."""

    __tablename__ = "library_playlists"
    __table_args__ = (Index("ix_library_playlists_name", "user_id", "platform", "name_key"),)

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    uri: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(String(512))
    name_key: Mapped[str] = mapped_column(String(512))
    """The normalized name between spaces (``store.library.music_key``)."""
    track_count: Mapped[int | None] = mapped_column(Integer)
    owned: Mapped[bool] = mapped_column(Boolean, default=True)
    """Whether the user may add tracks to it."""
    position: Mapped[int] = mapped_column(Integer, default=0)
    synced_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
