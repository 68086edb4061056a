"""``/v1/platforms/{name}``: link a user's music platform account (OAuth 2.0 + PKCE), read
its status, and remove it.

The caller is a user through a session: ``Authorization: Bearer <session token>``
acts for the session's user (created and tied to the session on its first
login). An admin credential acts for any user named by ``?user_id=``. Nothing
here ever answers with a token.

``GET .../login`` sends the browser to the platform (302), or answers
``{"authorize_url": ...}`` to a request that accepts only JSON (a page's
``fetch`` cannot read a redirect), and sets an HttpOnly cookie that binds the
login to this browser. The platform sends the browser back to
``GET .../callback`` with the code and the signed ``state``; the code is
exchanged with the PKCE verifier and the tokens are stored encrypted.

The cookie is scoped to the redirect URI as the browser sees it: its path
and, unless it is plain ``http://``, ``Secure``. Behind a reverse proxy
(a path prefix, TLS ended at the proxy) the configured
``PARLEY_<NAME>_REDIRECT_URI`` names both.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from signaling.callers import account_caller
from signaling.oauth import OAuthClient, OAuthError, OAuthRefusedError, safe_error_code
from signaling.oauth_state import StateError, cookie_name
from signaling.openapi import error_responses
from signaling.platforms import Platforms
from signaling.state import ApiError, AppState, State
from store.crypto import TokenCryptoError
from store.platform_accounts import AccountInfo, TokenGrant
from store.users import USER_ID_MAX, CallerProfile

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/platforms", tags=["platforms"])

MAX_PARAM_CHARS = 4096
"""Longest ``code`` or ``state`` accepted from a platform's redirect."""


class AuthorizeOut(BaseModel):
    """Where to send the browser (the answer to a JSON-only login request)."""

    authorize_url: str
    state_expires_at: int = Field(description="Unix time after which the login must restart.")


class AccountOut(BaseModel):
    """A platform account as the API shows it (never a token)."""

    platform: str
    configured: bool = Field(description="Whether this server offers the platform.")
    connected: bool = Field(description="Whether the agent can act on the account now.")
    status: str = Field(
        description="``connected``, ``disconnected`` (link again) or ``not_linked``."
    )
    scopes: list[str] = Field(default_factory=list)
    expires_at: str | None = Field(None, description="When the current access token expires.")
    renewable: bool = Field(False, description="Whether it is refreshed before it expires.")
    last_sync_at: str | None = None
    linked_at: str | None = None


class DeletedOut(BaseModel):
    """The answer to ``DELETE /v1/platforms/{name}``."""

    platform: str
    deleted: bool
    revoked: bool = Field(description="Whether the platform was asked to revoke the tokens.")


def _platforms(st: AppState) -> Platforms:
    if st.platforms is None:
        raise ApiError(503, "unavailable", "the server is starting; retry later")
    return st.platforms


def _known(platforms: Platforms, name: str) -> None:
    if name not in platforms.settings:
        raise ApiError(
            404,
            "platform_not_found",
            f"no platform {name[:40]!r}; known: " + ", ".join(sorted(platforms.settings)),
        )


def _client(platforms: Platforms, name: str) -> OAuthClient:
    _known(platforms, name)
    client = platforms.clients.get(name)
    if client is None:
        raise ApiError(
            409,
            "platform_not_configured",
            f"{name} is not configured on this server: the operator must set "
            f"PARLEY_{name.upper()}_CLIENT_ID (and its client secret)",
        )
    return client


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _account_out(platforms: Platforms, name: str, info: AccountInfo | None) -> dict[str, Any]:
    out = AccountOut(
        platform=name,
        configured=name in platforms.clients,
        connected=info is not None and info.connected,
        status=info.status.value if info is not None else "not_linked",
    )
    if info is not None:
        out.scopes = list(info.scopes)
        out.expires_at = _iso(info.expires_at)
        out.renewable = info.has_refresh_token
        out.last_sync_at = _iso(info.last_sync_at)
        out.linked_at = _iso(info.created_at)
    return out.model_dump()


def _redirect_uri(client: OAuthClient, request: Request) -> str:
    if client.settings.redirect_uri is not None:
        return client.settings.redirect_uri
    return str(request.url_for("platform_callback", name=client.name))


def _cookie_scope(redirect_uri: str) -> tuple[str, bool]:
    """The login cookie's ``Path`` and ``Secure``: those of the URL the platform sends the
    browser back to, as the browser sees it (behind a reverse proxy: the configured
    redirect URI, with the proxy's path prefix and its TLS), not the path and scheme
    this server was reached at. Secure unless that URL is plain ``http://``."""
    parts = urlsplit(redirect_uri)
    return parts.path or "/", parts.scheme != "http"


UserParam = Annotated[
    str | None,
    Query(max_length=USER_ID_MAX, description="The user an admin credential acts for."),
]


@router.get(
    "/{name}/login",
    response_model=AuthorizeOut,
    responses={
        302: {
            "description": "To the platform's authorization page (``Location``).",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 403, 404, 409, 503),
    },
)
async def login(
    name: str,
    request: Request,
    st: State,
    authorization: Annotated[str | None, Header()] = None,
    accept: Annotated[str | None, Header()] = None,
    user_id: UserParam = None,
) -> Response:
    """Start linking the caller's account: a redirect to the platform's consent page.

    ``Accept: application/json`` (without ``text/html``) answers the URL in JSON
    instead. Either way a cookie binds the login to this browser: the callback
    must come back to it within ``PARLEY_OAUTH_STATE_TTL_S``.
    """
    platforms = _platforms(st)
    caller = await account_caller(st, authorization, user_id)
    client = _client(platforms, name)
    target = caller.user_id
    if target is None and caller.session_id is not None:
        target = await st.store.users.for_session(caller.session_id)
        if target is not None:  # the session's first user: its live calls act for it now
            st.calls.identify(caller.session_id, CallerProfile(target))
    if target is None:
        raise ApiError(404, "session_not_found", "the token's session no longer exists")
    issued = platforms.states.issue(name, target)
    redirect_uri = _redirect_uri(client, request)
    url = client.authorize_url(
        redirect_uri=redirect_uri, state=issued.token, challenge=issued.challenge
    )
    wants_json = accept is not None and "application/json" in accept and "text/html" not in accept
    response: Response = (
        JSONResponse(
            AuthorizeOut(authorize_url=url, state_expires_at=issued.expires_at).model_dump()
        )
        if wants_json
        else RedirectResponse(url, status_code=302)
    )
    path, secure = _cookie_scope(redirect_uri)
    response.set_cookie(
        cookie_name(name),
        issued.nonce,
        max_age=platforms.states.ttl_s,
        path=path,
        secure=secure,
        httponly=True,
        samesite="lax",  # sent on the platform's top-level redirect back
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(
    "/{name}/callback",
    name="platform_callback",
    response_model=AccountOut,
    responses=error_responses(400, 403, 404, 409, 502, 503),
)
async def callback(
    name: str,
    request: Request,
    st: State,
    code: Annotated[str | None, Query(max_length=MAX_PARAM_CHARS)] = None,
    state: Annotated[str | None, Query(max_length=MAX_PARAM_CHARS)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Where the platform sends the browser back: verify the state, exchange the code (with
    the PKCE verifier) and store the account's tokens encrypted.

    ``error=access_denied`` (the user declined) answers 403; a missing, altered or
    expired state, or a code the platform refuses, 400; a state from another
    browser, 403.
    """
    platforms = _platforms(st)
    client = _client(platforms, name)
    if error is not None:
        if error == "access_denied":
            raise ApiError(403, "access_denied", f"access to {name} was declined")
        reason = safe_error_code(error) or "error"
        raise ApiError(400, "authorization_failed", f"{name} did not authorize ({reason})")
    if not code or not state:
        raise ApiError(400, "bad_request", "code and state are required")
    try:
        login_state = platforms.states.verify(state, name)
    except StateError as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    if not platforms.states.bound(login_state, request.cookies.get(cookie_name(name))):
        raise ApiError(
            403,
            "state_not_bound",
            "this login was started in another browser: start it again from /login here",
        )
    verifier = platforms.states.verifier(login_state.nonce)
    redirect_uri = _redirect_uri(client, request)
    try:
        grant = await client.exchange_code(code, verifier, redirect_uri)
    except OAuthRefusedError as exc:
        raise ApiError(400, "code_rejected", str(exc)) from None
    except OAuthError as exc:
        raise ApiError(502, "platform_unavailable", str(exc)) from None
    if grant.scopes is None:  # the platform granted what was asked (RFC 6749 5.1)
        grant = TokenGrant(
            grant.access_token, grant.refresh_token, grant.expires_at, tuple(client.settings.scopes)
        )
    info = await platforms.accounts.save(login_state.user_id, name, grant)
    log.info("%s: account linked", name)
    await platforms.connected(info)
    response = JSONResponse(_account_out(platforms, name, info))
    path, secure = _cookie_scope(redirect_uri)
    response.delete_cookie(
        cookie_name(name), path=path, secure=secure, httponly=True, samesite="lax"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get(
    "/{name}/status", response_model=AccountOut, responses=error_responses(400, 401, 403, 404, 503)
)
async def status(
    name: str,
    st: State,
    authorization: Annotated[str | None, Header()] = None,
    user_id: UserParam = None,
) -> dict[str, Any]:
    """Whether the caller's account is linked and usable, its scopes, expiry and last sync."""
    platforms = _platforms(st)
    caller = await account_caller(st, authorization, user_id)
    _known(platforms, name)
    info = (
        await platforms.accounts.info(caller.user_id, name) if caller.user_id is not None else None
    )
    return _account_out(platforms, name, info)


@router.delete(
    "/{name}", response_model=DeletedOut, responses=error_responses(400, 401, 403, 404, 503)
)
async def remove(
    name: str,
    st: State,
    authorization: Annotated[str | None, Header()] = None,
    user_id: UserParam = None,
) -> dict[str, Any]:
    """Revoke the account's tokens at the platform (where it offers revocation) and forget
    them, with the library synced from the account. The account is forgotten even when the
    platform cannot be reached."""
    platforms = _platforms(st)
    caller = await account_caller(st, authorization, user_id)
    _known(platforms, name)
    if caller.user_id is None:
        raise ApiError(404, "account_not_found", f"no {name} account is linked")
    revoked = False
    client = platforms.clients.get(name)
    try:
        creds = await platforms.accounts.credentials(caller.user_id, name)
    except TokenCryptoError:
        creds = None  # unreadable with the keys configured: it can only be forgotten
        log.warning("%s: stored tokens unreadable; forgetting the account unrevoked", name)
    if creds is not None and client is not None and client.can_revoke:
        try:
            revoked = await client.revoke(creds.access_token, creds.refresh_token)
        except OAuthError as exc:
            log.warning("%s: revocation failed (%s); forgetting anyway", name, type(exc).__name__)
    if not await platforms.accounts.delete(caller.user_id, name):
        raise ApiError(404, "account_not_found", f"no {name} account is linked")
    await platforms.disconnected(caller.user_id, name)  # its synced library goes with it
    return DeletedOut(platform=name, deleted=True, revoked=revoked).model_dump()
