"""Sessions: create, read, history and delete; each session is owned by its token.

Creating one needs the ``calls`` scope where API keys are required (see
``signaling.access``), is rate limited, and records the key on the session
(anonymous sessions that never get a turn are expired by the retention job).
Operators read sessions that have no caller token (phone calls) with an admin
credential (an admin-scope API key, or ``PARLEY_ADMIN_TOKEN``): it lists every
session and reads any session and its history; deleting stays with the
session's own token.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, Field

from signaling.access import AccessError, Principal, guard
from signaling.openapi import error_responses
from signaling.state import ApiError, AppState, State
from signaling.tokens import bearer
from signaling.usage import UsageTotals
from store.models import VoiceSession
from store.repositories import SessionCursor
from store.users import USER_ID_MAX

router = APIRouter(prefix="/v1/sessions")

MAX_PAGE = 200
MAX_CURSOR_CHARS = 512


async def _authorize(st: AppState, session_id: str, authorization: str | None) -> None:
    """An admin credential, or the session's own token (401 missing/invalid, 403 another's
    session, or an API key without the admin scope)."""
    token = bearer(authorization)
    principal = await st.access.identify(token)
    if principal is None:
        st.tokens.verify_session(token, session_id)
    elif not principal.allows("admin"):
        raise AccessError("the session's token or an admin key is required", 403)


async def require_admin(st: AppState, authorization: str | None) -> None:
    """401 unless ``authorization`` carries an admin credential (403: a key without the
    admin scope)."""
    await st.access.require(authorization, "admin")


def _encode_cursor(cursor: SessionCursor) -> str:
    raw = json.dumps([cursor.started_at.isoformat(), cursor.session_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(value: str) -> SessionCursor:
    """The position an opaque ``cursor`` names (400 if it is not one this API issued)."""
    try:
        if len(value) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        started, session_id = json.loads(raw)
        if not isinstance(started, str) or not isinstance(session_id, str):
            raise ValueError("wrong types")
        at = dt.datetime.fromisoformat(started)
        if at.tzinfo is None:
            raise ValueError("naive time")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_cursor", "cursor is not one this API returned") from exc
    return SessionCursor(at, session_id)


def _iso(value: dt.datetime) -> str:
    """ISO 8601 with its UTC offset on every backend (SQLite hands back naive UTC)."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).isoformat()


def _session_out(st: AppState, row: VoiceSession) -> dict[str, Any]:
    return {
        "id": row.id,
        "transport": row.transport,
        "status": row.status,
        "language": row.language,
        "started_at": _iso(row.started_at),
        "ended_at": _iso(row.ended_at) if row.ended_at else None,
        "turn_count": row.turn_count,
        "avg_stt_confidence": row.avg_stt_confidence,
        "error_count": row.error_count,
        "attributes": row.attributes or {},
        "end_reason": row.end_reason,
        "live_calls": [c.id for c in st.calls.calls(session_id=row.id)],
    }


def new_session(st: AppState, *, auth_time: int | None = None) -> dict[str, Any]:
    """A fresh session id and the token that owns it (continuing the chain that began at
    ``auth_time``; None: a new one, see ``signaling.tokens``)."""
    session_id = "ses_" + secrets.token_urlsafe(16)
    token, exp = st.tokens.mint_session(session_id, auth_time=auth_time)
    return {"id": session_id, "token": token, "token_expires_at": exp}


@router.get("", responses=error_responses(400, 401, 403, 503))
async def list_sessions(
    st: State,
    authorization: Annotated[str | None, Header()] = None,
    transport: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
) -> dict[str, Any]:
    """Every session, newest first (an admin credential only).

    ``transport`` keeps one transport's sessions (``sip``, ``webrtc``, ...);
    ``limit`` (1-200) sessions a page; pass the answer's ``next_cursor`` as
    ``cursor`` for the next page (null: no more).
    """
    await require_admin(st, authorization)
    after = _decode_cursor(cursor) if cursor is not None else None
    page = await st.store.sessions.page(transport=transport, limit=limit, after=after)
    return {
        "sessions": [_session_out(st, row) for row in page.sessions],
        "next_cursor": _encode_cursor(page.next) if page.next is not None else None,
    }


class SessionIn(BaseModel):
    """Body of ``POST /v1/sessions`` (optional)."""

    user_id: str | None = Field(
        None,
        min_length=1,
        max_length=USER_ID_MAX,
        description="The user the session belongs to (an admin credential only): its calls "
        "and chats act on that user's platform accounts.",
    )


async def _session_user(
    st: AppState, principal: Principal, body: SessionIn | None, earlier: str | None
) -> tuple[str | None, int | None]:
    """Whom a new session belongs to: the user an admin names, or the user of the earlier
    session whose token is presented (None: an anonymous session); and the ``auth_time``
    of the chain it continues (None: it starts one). A chain past its maximum age is
    refused (401)."""
    named = body.user_id if body is not None else None
    if named is not None and earlier is not None:
        raise ApiError(400, "bad_request", "name a user_id or present a session token, not both")
    if named is not None:
        if not principal.allows("admin"):
            raise AccessError("only an admin credential names a session's user", 403)
        await st.store.users.ensure(named)
        return named, None
    if earlier is not None:
        session_id, auth_time = st.tokens.session_chain(earlier)
        return await st.store.users.of_session(session_id), auth_time
    return None, None


@router.post("", status_code=201, responses=error_responses(400, 401, 403, 409, 413, 429, 503))
async def create_session(
    request: Request,
    st: State,
    body: SessionIn | None = None,
    authorization: Annotated[str | None, Header()] = None,
    x_session_token: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Create a session; keep its ``token`` to read it and to attach calls and chats.

    Needs an API key with the ``calls`` scope where keys are required; rate
    limited per client address and per key (429).

    A returning user's new session finds their platform accounts in one of two
    ways: ``X-Session-Token`` carries the token of one of their earlier sessions
    (the new session belongs to that session's user), or an admin credential
    names the user in the body's ``user_id``. ``user_id`` in the answer is the
    session's user (null: anonymous until it links an account).

    A session found by ``X-Session-Token`` continues that session's chain: its
    token expires no later than ``PARLEY_SESSION_CHAIN_MAX_S`` after the chain's
    first session, and a chain older than that is refused (401): the user signs
    in again, by linking their account from a new session.
    """
    principal = await guard(st, request, authorization, bucket="create")
    user_id, auth_time = await _session_user(st, principal, body, x_session_token)
    out = new_session(st, auth_time=auth_time)
    await st.store.sessions.create(out["id"], transport="none", key_id=principal.key_id)
    if user_id is not None and not await st.store.users.attach(out["id"], user_id):
        raise ApiError(409, "session_conflict", "the new session could not be given its user")
    return {**out, "user_id": user_id}


@router.get("/{session_id}", responses=error_responses(401, 403, 404, 503))
async def get_session(
    session_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """A session's status and statistics (its token, or the admin token).

    ``usage`` sums its turns' usage: tokens, STT audio seconds, TTS characters,
    the cost estimate (USD; null when no turn had a price) and, under
    ``providers[stage][provider]``, each provider's share.
    """
    await _authorize(st, session_id, authorization)
    row = await st.store.sessions.get(session_id)
    if row is None:
        raise ApiError(404, "session_not_found", "no such session")
    usage = UsageTotals.of(await st.store.sessions.usages(session_id))
    return {**_session_out(st, row), "usage": usage.to_dict()}


@router.get("/{session_id}/history", responses=error_responses(401, 403, 404, 503))
async def get_history(
    session_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """The session's turns in order, with the heard text of interrupted replies
    (its token, or the admin token).

    Agent turns carry their ``usage`` (providers, models, chains, tokens, audio
    seconds, characters, ``cost_usd`` and ``cost_by_stage``; null on turns
    recorded without one); ``usage`` at the top sums the turns listed, as
    ``GET /v1/sessions/{id}`` does.
    """
    await _authorize(st, session_id, authorization)
    if await st.store.sessions.get(session_id) is None:
        raise ApiError(404, "session_not_found", "no such session")
    turns = await st.store.sessions.turns(session_id)
    return {
        "id": session_id,
        "usage": UsageTotals.of(t.usage for t in turns).to_dict(),
        "turns": [
            {
                "seq": t.seq,
                "turn_id": t.turn_id,
                "role": t.role,
                "text": t.text,
                "heard_text": t.heard_text,
                "interrupted": t.interrupted,
                "stt_confidence": t.stt_confidence,
                "latencies": t.latencies,
                "usage": t.usage,
                "started_at": _iso(t.started_at),
            }
            for t in turns
        ],
    }


@router.delete("/{session_id}", responses=error_responses(401, 403, 404, 503))
async def delete_session(
    session_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """End the session's calls and delete it with its turns (its own token only)."""
    st.tokens.verify_session(bearer(authorization), session_id)
    for call in st.calls.calls(session_id=session_id):
        await st.calls.end(call, "session deleted")
    await st.store.writer.flush(5.0)
    existed = await st.store.sessions.delete(session_id)
    await st.store.state.forget(session_id)
    if not existed:
        raise ApiError(404, "session_not_found", "no such session")
    return {"id": session_id, "deleted": True}
