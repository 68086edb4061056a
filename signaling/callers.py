"""Who a request about a user's music acts for: the session's user, or a user an admin names.

The account routes (``/v1/platforms``) and the search (``/v1/search``) act for
one user. ``account_caller`` reads it from the request's credential:

- a session token (``Authorization: Bearer <session token>``) acts for the
  session's user (None while the session has none: it gets one on its first
  platform login); ``?user_id=`` is refused (400), so a session can never
  act on another user's accounts;
- an admin credential (an admin-scope API key, ``PARLEY_ADMIN_TOKEN``) acts
  for the user named by ``?user_id=`` (400 without it);
- an API key without the admin scope is refused (403), no credential 401.
"""

from __future__ import annotations

from dataclasses import dataclass

from signaling.access import AccessError
from signaling.state import ApiError, AppState
from signaling.tokens import bearer


@dataclass(frozen=True, slots=True)
class Caller:
    """Who an account request acts for."""

    user_id: str | None
    """None: a session that has no user yet (it links nothing until its first login)."""
    session_id: str | None
    """The session whose token was presented (None: an admin credential)."""


async def account_caller(st: AppState, authorization: str | None, user_id: str | None) -> Caller:
    """The session's user (session token), or ``user_id`` (admin credential); see the module
    docstring for the refusals."""
    token = bearer(authorization)
    principal = await st.access.identify(token)
    if principal is None:
        session_id = st.tokens.session_of(token)
        if user_id is not None:
            raise ApiError(400, "bad_request", "user_id is for admin credentials only")
        if await st.store.sessions.get(session_id) is None:
            raise ApiError(404, "session_not_found", "the token's session no longer exists")
        return Caller(await st.store.users.of_session(session_id), session_id)
    if not principal.allows("admin"):
        raise AccessError("a session token or an admin credential is required", 403)
    if user_id is None:
        raise ApiError(400, "user_required", "an admin credential names the user: ?user_id=...")
    return Caller(user_id, None)
