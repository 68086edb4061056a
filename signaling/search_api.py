"""``GET /v1/search``: find tracks for a spoken query, through the cache tiers.

The caller is a user through a session (``Authorization: Bearer <session
token>``: the session's user), or an admin credential with ``?user_id=``, as
for ``/v1/platforms``. The answer names the tier that served it (``hot``,
``sql``, ``library``, ``platform``) and each tier's time in milliseconds
(``signaling.music_search``). Platform failures answer like the tools say
them: 409 for an account that is not linked (or must be linked again), 429
with ``Retry-After`` when the platform rate-limits, 503 when it does not answer.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from agent.platforms.base import (
    NotConnectedError,
    PlatformAuthError,
    PlatformError,
    PlatformRateLimitedError,
)
from agent.platforms.music_tools import MAX_QUERY_CHARS
from signaling.callers import account_caller
from signaling.music import Music
from signaling.openapi import error_responses
from signaling.state import ApiError, AppState, State
from store.users import USER_ID_MAX

router = APIRouter(prefix="/v1/search", tags=["music"])

MAX_RESULTS = 10


class TrackOut(BaseModel):
    """A track on a platform."""

    platform: str
    id: str
    uri: str = Field(description="The platform's own reference (``spotify:track:...``, a URN).")
    name: str
    artists: list[str]
    album: str | None = None
    duration_ms: int | None = None


class SearchOut(BaseModel):
    """Tracks found for a query, and where."""

    query: str
    platform: str
    tier: str = Field(
        description="Where it was answered: ``hot``, ``sql``, ``library``, ``platform``."
    )
    timings_ms: dict[str, float] = Field(
        description="Milliseconds spent in each tier asked, and ``total``."
    )
    tracks: list[TrackOut]


def _music(st: AppState) -> Music:
    music = st.music
    if music is None:
        raise ApiError(503, "unavailable", "the server is starting; retry later")
    return music


async def _user(st: AppState, authorization: str | None, user_id: str | None) -> str:
    """The user the search acts for (``signaling.callers``); 409 for a session without one."""
    caller = await account_caller(st, authorization, user_id)
    if caller.user_id is None:
        raise ApiError(409, "not_connected", "link a music platform account first")
    return caller.user_id


async def _platform(st: AppState, music: Music, user_id: str, named: str | None) -> str:
    """The platform named, else the user's preferred one, else the first configured."""
    if named is not None:
        if named not in music.platforms:
            offered = ", ".join(sorted(music.platforms)) or "none"
            raise ApiError(
                404, "platform_not_found", f"no platform {named[:40]!r} here (offered: {offered})"
            )
        return named
    if not music.platforms:
        raise ApiError(409, "platform_not_configured", "no music platform is configured")
    preferred = await st.store.users.preferred_platform(user_id)
    return preferred if preferred in music.platforms else next(iter(music.platforms))


def _refusal(exc: PlatformError) -> JSONResponse:
    if isinstance(exc, NotConnectedError | PlatformAuthError):
        status, code = 409, "not_connected"
        detail = f"the {exc.platform} account is not connected; link it again"
    elif isinstance(exc, PlatformRateLimitedError):
        retry = max(1, math.ceil(exc.retry_after_s or 1))
        return JSONResponse(
            {
                "error": "rate_limited",
                "detail": f"{exc.platform} is rate limiting; retry later",
                "retry_after_s": retry,
            },
            status_code=429,
            headers={"Retry-After": str(retry)},
        )
    elif exc.retryable:
        return JSONResponse(
            {"error": "platform_unavailable", "detail": f"{exc.platform} is not answering"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    else:
        status, code = 502, "platform_error"
        detail = f"{exc.platform} refused the search"
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


@router.get(
    "",
    response_model=SearchOut,
    responses=error_responses(400, 401, 403, 404, 409, 429, 502, 503),
)
async def search(
    request: Request,
    st: State,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
    platform: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_RESULTS)] = 5,
    user_id: Annotated[str | None, Query(min_length=1, max_length=USER_ID_MAX)] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Any:
    """Tracks matching a spoken query (``"play Shape of You by Ed Sheeran"``).

    Resolved through the hot cache, the SQL search cache, the user's synced
    library, then the platform's search API (whose answer is cached).
    ``platform`` defaults to the user's preferred platform, else the first
    configured. Needs the session's token (its user) or an admin credential
    with ``user_id``.
    """
    # Counted with chat requests: each may ask a platform on the user's behalf.
    await st.limits.hit("chat", address=st.limits.client_address(request))
    music = _music(st)
    if not q.strip():
        raise ApiError(400, "bad_query", "q must name a song")
    user = await _user(st, authorization, user_id)
    name = await _platform(st, music, user, platform)
    try:
        found = await music.resolver.tracks(user, name, q, limit)
    except PlatformError as exc:
        return _refusal(exc)
    return found.to_dict()
