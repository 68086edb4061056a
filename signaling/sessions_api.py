"""Sessions: create, read, history and delete; each session is owned by its token."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header

from signaling.state import ApiError, AppState, State
from signaling.tokens import bearer

router = APIRouter(prefix="/v1/sessions")


def _authorize(st: AppState, session_id: str, authorization: str | None) -> None:
    st.tokens.verify_session(bearer(authorization), session_id)


def new_session(st: AppState) -> dict[str, Any]:
    """A fresh session id and the token that owns it."""
    session_id = "ses_" + secrets.token_urlsafe(16)
    token, exp = st.tokens.mint_session(session_id)
    return {"id": session_id, "token": token, "token_expires_at": exp}


@router.post("", status_code=201)
async def create_session(st: State) -> dict[str, Any]:
    """Create a session; keep its ``token`` to read it and to attach calls and chats."""
    out = new_session(st)
    await st.store.sessions.create(out["id"], transport="none")
    return out


@router.get("/{session_id}")
async def get_session(
    session_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """A session's status and statistics."""
    _authorize(st, session_id, authorization)
    row = await st.store.sessions.get(session_id)
    if row is None:
        raise ApiError(404, "session_not_found", "no such session")
    return {
        "id": row.id,
        "transport": row.transport,
        "status": row.status,
        "language": row.language,
        "started_at": row.started_at.isoformat(),
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "turn_count": row.turn_count,
        "avg_stt_confidence": row.avg_stt_confidence,
        "error_count": row.error_count,
        "live_calls": [c.id for c in st.calls.calls(session_id=session_id)],
    }


@router.get("/{session_id}/history")
async def get_history(
    session_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """The session's turns in order, with the heard text of interrupted replies."""
    _authorize(st, session_id, authorization)
    if await st.store.sessions.get(session_id) is None:
        raise ApiError(404, "session_not_found", "no such session")
    turns = await st.store.sessions.turns(session_id)
    return {
        "id": session_id,
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
                "started_at": t.started_at.isoformat(),
            }
            for t in turns
        ],
    }


@router.delete("/{session_id}")
async def delete_session(
    session_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """End the session's calls and delete it with its turns."""
    _authorize(st, session_id, authorization)
    for call in st.calls.calls(session_id=session_id):
        await st.calls.end(call, "session deleted")
    await st.store.writer.flush(5.0)
    existed = await st.store.sessions.delete(session_id)
    await st.store.state.forget(session_id)
    if not existed:
        raise ApiError(404, "session_not_found", "no such session")
    return {"id": session_id, "deleted": True}
