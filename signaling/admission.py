"""The one gate every call passes, whatever its transport.

``authorize`` checks the room and its join token, and the session token when
the call continues a session, and counts the call in the rate limits (nothing
is created); ``open_call`` reserves capacity (the call ledger: the server-wide
cap and the API key's quota, across workers) and starts the session;
``start_call`` runs it over its transport and counts it in the
``parley_calls{transport=...}`` metric. A transport does as much of its own
protocol work as it can before ``open_call`` (WebRTC applies the offer and
creates its answer first, so a bad offer never takes a slot); what fails after
it ends the call with ``CallManager.end``.

Refusals raise ``AdmissionError``, whose ``status`` is the HTTP status (401,
403, 404, 429 for a key's quota or a rate limit, 503 for capacity); the
WebSocket closes with ``4000 + status`` and a SIP bridge can answer with the
same SIP status codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from media.transport import Transport
from signaling.calls import Call, CallLimitError, CallQuotaError
from signaling.correlation import bind_call
from signaling.state import AppState
from signaling.tokens import TokenError

RETRY_AFTER_S = 5
"""What a caller refused for capacity is told to wait before trying again."""


class AdmissionError(Exception):
    """A call that is refused.

    ``status`` is 401 (no or bad token), 403 (another room's or session's
    token), 404 (no such room), 429 (the API key holds its quota of concurrent
    calls) or 503 (no capacity); ``code`` is the API's error code; ``stage`` is
    ``"auth"`` or ``"capacity"``; only capacity refusals are ``retryable``
    (after ``RETRY_AFTER_S``).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.stage = "capacity" if status in (429, 503) else "auth"
        self.retryable = status in (429, 503)


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``authorize`` allows: a call in ``room_id``, continuing ``session_id`` if set."""

    room_id: str
    session_id: str | None = None
    key_id: str | None = None
    """The API key the call is counted against (None: an open server's anonymous caller)."""
    key_max_calls: int | None = None
    """That key's concurrent-call quota (None: the server-wide cap only)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """An opened call, and the token of its session when the call started a new one."""

    call: Call
    session_token: str | None


async def authorize(
    st: AppState,
    room_id: str,
    token: str | None,
    *,
    session_id: str | None = None,
    session_token: str | None = None,
    address: str | None = None,
) -> Grant:
    """Check the room, its join token and (to continue a session) the session token.

    The call is counted in the ``offer`` rate limit of the client ``address``
    (when given) and of the API key that created the room, whose quota of
    concurrent calls goes into the grant. A room whose key was revoked takes
    no more calls (403). Over a rate limit: ``RateLimitedError`` (429); the
    store unreachable: ``AdmissionError`` 503.
    """
    if address is not None:
        await st.limits.hit("offer", address=address)
    try:
        room = await st.rooms.get(room_id)
        key = await st.store.keys.get(room.key_id) if room and room.key_id else None
    except (SQLAlchemyError, OSError) as exc:
        raise AdmissionError(503, "store_unavailable", "the store is unavailable") from exc
    if room is None:
        raise AdmissionError(404, "room_not_found", "no such room")
    try:
        st.tokens.verify(token, room_id)
        if session_id is not None:
            st.tokens.verify_session(session_token, session_id)
    except TokenError as exc:
        code = "unauthorized" if exc.status == 401 else "forbidden"
        raise AdmissionError(exc.status, code, str(exc)) from exc
    if room.key_id is None:
        return Grant(room_id, session_id)
    if key is None or key.revoked:
        raise AdmissionError(403, "key_revoked", "the API key that created this room was revoked")
    await st.limits.hit("offer", key_id=key.id)
    return Grant(room_id, session_id, key_id=key.id, key_max_calls=key.max_calls)


async def open_call(st: AppState, grant: Grant, kind: str, *, output_rate: int) -> Admitted:
    """Reserve capacity and start the session of a ``kind`` call (``output_rate`` Hz out)."""
    try:
        call = await st.calls.open(
            kind,
            room_id=grant.room_id,
            output_rate=output_rate,
            session_id=grant.session_id,
            key_id=grant.key_id,
            key_max_calls=grant.key_max_calls,
        )
    except CallQuotaError as exc:
        raise AdmissionError(429, "call_quota_exceeded", str(exc)) from exc
    except CallLimitError as exc:
        raise AdmissionError(503, "too_many_calls", str(exc)) from exc
    bind_call(call.correlation)  # the rest of this request (its log lines) carries the call id
    token = None if grant.session_id is not None else st.tokens.mint_session(call.session.id)[0]
    return Admitted(call, token)


async def open_protocol_call(
    st: AppState, kind: str, *, output_rate: int, attributes: Mapping[str, str]
) -> Call:
    """Reserve capacity and start a new session for a call its own protocol admitted.

    SIP callers are admitted by the SIP server (source allowlist, digest
    authentication): they have no room and no token. ``attributes`` (the
    caller's From URI, the Call-ID) are kept with the session.
    """
    try:
        return await st.calls.open(
            kind, room_id=None, output_rate=output_rate, attributes=attributes
        )
    except CallLimitError as exc:
        raise AdmissionError(503, "too_many_calls", str(exc)) from exc


def start_call(st: AppState, call: Call, transport: Transport) -> None:
    """Run an opened call over its transport, and count it."""
    st.calls.start(call, transport)
    st.metrics.calls.labels(transport.kind).inc()
