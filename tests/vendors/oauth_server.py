"""A loopback OAuth 2.0 authorization server, as Spotify's and SoundCloud's accounts
services document theirs, for tests.

Endpoints (``routes()`` gives them to mount in another fake, e.g. a Web API's):

``GET /authorize``
    ``response_type=code``, ``client_id``, ``redirect_uri``, ``scope``,
    ``state``, ``code_challenge``, ``code_challenge_method=S256``. Approves at
    once (the user "consents") and redirects (302) to ``redirect_uri`` with
    ``code`` and ``state``; with ``deny_next()`` it redirects with
    ``error=access_denied`` instead. A bad client or request answers 400.
``POST /api/token``
    Form body; the client authenticates with HTTP Basic or ``client_id`` /
    ``client_secret`` in the body (401 ``invalid_client`` otherwise).
    ``grant_type=authorization_code`` needs an unused, unexpired code, the
    same ``redirect_uri``, and a ``code_verifier`` whose S256 hash is the
    code's challenge; ``grant_type=refresh_token`` needs a live refresh token.
    Anything else: 400 with an RFC 6749 error (``invalid_grant``...). Answers
    ``access_token``, ``token_type``, ``expires_in``, ``refresh_token`` and
    ``scope``; with ``rotate_refresh`` (SoundCloud) every refresh issues a new,
    single-use refresh token, without it (Spotify) the refresh answer has none.
``POST /oauth/revoke``
    RFC 7009 (``token``, ``token_type_hint``, client authentication): 200.
``POST /sign-out``
    SoundCloud's: JSON ``{"access_token": ...}``; revokes the whole grant: 200.
``GET /me``
    A protected resource: 200 ``{"id": user}`` with a live access token, else
    401 (how a Web API fake can check tokens: ``check_bearer``).

State is in memory; ``expires_in`` sets issued tokens' lifetime; ``expire()``
ends one now; ``token_delay_s`` slows the token endpoint (to overlap
concurrent refreshes). ``requests`` records the token and revocation
requests (grant type and form, secrets included: tests check what was sent).
Start it with ``async with OAuthServer() as server:`` (an ephemeral port, on
the caller's event loop). No pytest dependency.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.vendors.loopback import LoopbackServer

CODE_TTL_S = 60.0


@dataclass(slots=True)
class Grant:
    """One user's authorization, with its current tokens."""

    user: str
    scope: str
    access_token: str
    refresh_token: str
    access_expires_at: float
    revoked: bool = False
    used_refresh_tokens: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Code:
    grant_user: str
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Recorded:
    """A request to the token or revocation endpoints."""

    path: str
    form: dict[str, str]
    basic_client: str | None
    """The client id of an HTTP Basic authentication (None: none)."""


def s256(verifier: str) -> str:
    """The S256 code challenge of a verifier (RFC 7636 4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


class OAuthServer(LoopbackServer):
    """The loopback authorization server (see the module docstring)."""

    def __init__(
        self,
        client_id: str = "test-client",
        client_secret: str = "test-client-secret",
        *,
        user: str = "listener-1",
        expires_in: int = 3600,
        rotate_refresh: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.user = user
        self.expires_in = expires_in
        self.rotate_refresh = rotate_refresh
        self.token_delay_s = 0.0
        self.requests: list[Recorded] = []
        self.grants: list[Grant] = []
        self._codes: dict[str, _Code] = {}
        self._deny_next = False
        super().__init__(Starlette(routes=self.routes()), host=host, port=port)

    # -- for other fakes

    def routes(self, prefix: str = "") -> list[Route]:
        """The endpoints, to mount under ``prefix`` in another Starlette app."""
        return [
            Route(f"{prefix}/authorize", self._authorize, methods=["GET"]),
            Route(f"{prefix}/api/token", self._token, methods=["POST"]),
            Route(f"{prefix}/oauth/revoke", self._revoke, methods=["POST"]),
            Route(f"{prefix}/sign-out", self._sign_out, methods=["POST"]),
            Route(f"{prefix}/me", self._me, methods=["GET"]),
        ]

    def check_bearer(self, authorization: str | None) -> Grant | None:
        """The grant of a live access token in ``Authorization: Bearer|OAuth <token>``."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "oauth"):
            return None
        for grant in self.grants:
            if (
                grant.access_token == token.strip()
                and not grant.revoked
                and time.time() < grant.access_expires_at
            ):
                return grant
        return None

    # -- control and inspection

    def deny_next(self) -> None:
        """The next authorization is declined by the user (``error=access_denied``)."""
        self._deny_next = True

    def expire(self, access_token: str) -> None:
        """End an access token's life now (the platform's 401 follows)."""
        for grant in self.grants:
            if grant.access_token == access_token:
                grant.access_expires_at = 0.0

    def revoke_all(self) -> None:
        """Revoke every grant (as a user removing the app in the platform's settings)."""
        for grant in self.grants:
            grant.revoked = True

    def grants_of(self, path: str, grant_type: str | None = None) -> list[Recorded]:
        """Recorded requests to ``path`` (of one ``grant_type``)."""
        return [
            r
            for r in self.requests
            if r.path == path and (grant_type is None or r.form.get("grant_type") == grant_type)
        ]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        return self.url

    # -- endpoints

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id:
            return _error(400, "invalid_client", "unknown client_id")
        redirect_uri = q.get("redirect_uri")
        if not redirect_uri:
            return _error(400, "invalid_request", "redirect_uri is required")
        state = q.get("state", "")
        if self._deny_next:
            self._deny_next = False
            return _redirect(redirect_uri, {"error": "access_denied", "state": state})
        if q.get("response_type") != "code":
            return _redirect(redirect_uri, {"error": "unsupported_response_type", "state": state})
        challenge = q.get("code_challenge", "")
        if q.get("code_challenge_method") != "S256" or not 43 <= len(challenge) <= 128:
            return _redirect(redirect_uri, {"error": "invalid_request", "state": state})
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            self.user,
            self.client_id,
            redirect_uri,
            challenge,
            q.get("scope", ""),
            time.time() + CODE_TTL_S,
        )
        return _redirect(redirect_uri, {"code": code, "state": state})

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        basic = _basic_client(request.headers.get("authorization"))
        self.requests.append(Recorded("/api/token", form, basic[0] if basic else None))
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        if not self._client_ok(form, basic):
            return _error(401, "invalid_client", "client authentication failed")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange(form)
        if grant_type == "refresh_token":
            return self._refresh(form)
        return _error(400, "unsupported_grant_type", "grant_type is not supported")

    def _client_ok(self, form: dict[str, str], basic: tuple[str, str] | None) -> bool:
        if basic is not None:
            return basic == (self.client_id, self.client_secret)
        return (
            form.get("client_id") == self.client_id
            and form.get("client_secret") == self.client_secret
        )

    def _exchange(self, form: dict[str, str]) -> Response:
        code = self._codes.pop(form.get("code", ""), None)  # single use
        if code is None or code.expires_at < time.time():
            return _error(400, "invalid_grant", "invalid authorization code")
        if form.get("redirect_uri") != code.redirect_uri:
            return _error(400, "invalid_grant", "redirect_uri mismatch")
        if s256(form.get("code_verifier", "")) != code.challenge:
            return _error(400, "invalid_grant", "code_verifier does not match the challenge")
        grant = Grant(
            user=code.grant_user,
            scope=code.scope,
            access_token="at-" + secrets.token_urlsafe(24),
            refresh_token="rt-" + secrets.token_urlsafe(24),
            access_expires_at=time.time() + self.expires_in,
        )
        self.grants.append(grant)
        return self._answer(grant, include_refresh=True)

    def _refresh(self, form: dict[str, str]) -> Response:
        token = form.get("refresh_token", "")
        for grant in self.grants:
            if grant.refresh_token == token and not grant.revoked:
                grant.access_token = "at-" + secrets.token_urlsafe(24)
                grant.access_expires_at = time.time() + self.expires_in
                if self.rotate_refresh:
                    grant.used_refresh_tokens.add(token)
                    grant.refresh_token = "rt-" + secrets.token_urlsafe(24)
                return self._answer(grant, include_refresh=self.rotate_refresh)
        return _error(400, "invalid_grant", "invalid refresh token")

    def _answer(self, grant: Grant, *, include_refresh: bool) -> Response:
        body: dict[str, Any] = {
            "access_token": grant.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": grant.scope,
        }
        if include_refresh:
            body["refresh_token"] = grant.refresh_token
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def _revoke(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        basic = _basic_client(request.headers.get("authorization"))
        self.requests.append(Recorded("/oauth/revoke", form, basic[0] if basic else None))
        if not self._client_ok(form, basic):
            return _error(401, "invalid_client", "client authentication failed")
        token = form.get("token", "")
        for grant in self.grants:
            if token in (grant.access_token, grant.refresh_token):
                grant.revoked = True
        return Response(status_code=200)  # RFC 7009 2.2: also for unknown tokens

    async def _sign_out(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request", "a JSON body is required")
        token = body.get("access_token") if isinstance(body, dict) else None
        self.requests.append(Recorded("/sign-out", {"access_token": str(token)}, None))
        for grant in self.grants:
            if grant.access_token == token:
                grant.revoked = True
        return JSONResponse({})

    async def _me(self, request: Request) -> Response:
        grant = self.check_bearer(request.headers.get("authorization"))
        if grant is None:
            return JSONResponse(
                {"error": {"status": 401, "message": "The access token expired"}}, status_code=401
            )
        return JSONResponse({"id": grant.user})


def _redirect(uri: str, params: dict[str, str]) -> Response:
    separator = "&" if "?" in uri else "?"
    return RedirectResponse(f"{uri}{separator}{urlencode(params)}", status_code=302)


def _error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _basic_client(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    client, sep, secret = raw.partition(":")
    return (client, secret) if sep else None
