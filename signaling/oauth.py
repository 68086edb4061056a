"""An OAuth 2.0 client of one platform: authorize URL, code exchange, refresh, revocation.

Speaks RFC 6749 (authorization code and refresh token grants) with PKCE
(RFC 7636, ``S256``) and revocation (RFC 7009, or SoundCloud's sign-out).
Errors are typed and never carry a token or a client secret:
``OAuthRefusedError`` when the platform refused a grant (a 400 such as
``invalid_grant``, or a 401), ``OAuthUnavailableError`` when it could not be
asked (network, time-out, 5xx, an answer that is not a token response).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from typing import Any
from urllib.parse import urlencode

import httpx

from signaling.platform_settings import OAuthClientSettings
from store.platform_accounts import TokenGrant

_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")
"""What an ``error`` value from a platform must look like to be repeated in a message."""
MAX_TOKEN_CHARS = 8192


class OAuthError(Exception):
    """An OAuth request to a platform failed."""

    def __init__(self, platform: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{platform}: {message}")
        self.platform = platform
        self.status = status


class OAuthRefusedError(OAuthError):
    """The platform refused the grant (``error`` is its OAuth error code, when safe to show)."""

    def __init__(self, platform: str, status: int, error: str | None) -> None:
        super().__init__(
            platform, f"the platform refused the grant ({error or f'HTTP {status}'})", status=status
        )
        self.error = error


class OAuthUnavailableError(OAuthError):
    """The platform's endpoint could not be asked, or answered something unusable."""


def safe_error_code(value: object) -> str | None:
    """An OAuth ``error`` value fit to repeat (a short snake_case word), else None."""
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else None


def code_challenge(verifier: str) -> str:
    """The PKCE ``S256`` challenge of a verifier: BASE64URL(SHA256(verifier)), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class OAuthClient:
    """One platform's OAuth client over a shared ``httpx.AsyncClient``."""

    def __init__(self, name: str, settings: OAuthClientSettings, http: httpx.AsyncClient) -> None:
        if settings.client_id is None:
            raise ValueError(f"{name} has no client id")
        self.name = name
        self.settings = settings
        self.client_id = settings.client_id
        self._http = http

    @property
    def can_revoke(self) -> bool:
        """Whether the platform has a revocation endpoint."""
        return self.settings.revoke_url is not None

    def authorize_url(self, *, redirect_uri: str, state: str, challenge: str) -> str:
        """Where to send the user's browser to grant access."""
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.settings.scopes:
            query["scope"] = " ".join(self.settings.scopes)
        separator = "&" if "?" in self.settings.authorize_url else "?"
        return f"{self.settings.authorize_url}{separator}{urlencode(query)}"

    async def exchange_code(self, code: str, verifier: str, redirect_uri: str) -> TokenGrant:
        """Trade an authorization code (and the PKCE verifier) for tokens."""
        return await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> TokenGrant:
        """A new access token (and, on some platforms, a new refresh token)."""
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def revoke(self, access_token: str, refresh_token: str | None) -> bool:
        """Revoke the account's tokens at the platform; False when it has no endpoint."""
        url = self.settings.revoke_url
        if url is None:
            return False
        if self.settings.revoke_style == "sign_out":
            await self._post(url, json={"access_token": access_token})
            return True
        # RFC 7009: revoking the refresh token revokes its access tokens too (2.1).
        token, hint = (
            (refresh_token, "refresh_token") if refresh_token else (access_token, "access_token")
        )
        await self._post(url, data={"token": token, "token_type_hint": hint}, client_auth=True)
        return True

    async def _token_request(self, form: dict[str, str]) -> TokenGrant:
        body = await self._post(self.settings.token_url, data=form, client_auth=True)
        return self._grant(body)

    async def _post(
        self,
        url: str,
        *,
        data: dict[str, str] | None = None,
        json: dict[str, str] | None = None,
        client_auth: bool = False,
    ) -> dict[str, Any]:
        auth: httpx.BasicAuth | None = None
        if client_auth:
            secret = self.settings.client_secret
            if self.settings.client_auth == "basic" and secret is not None:
                auth = httpx.BasicAuth(self.client_id, secret.get_secret_value())
            else:
                data = {**(data or {}), "client_id": self.client_id}
                if secret is not None:
                    data["client_secret"] = secret.get_secret_value()
        try:
            response = await self._http.post(
                url,
                data=data,
                json=json,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise OAuthUnavailableError(
                self.name, f"the token service is unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code in (400, 401):
            raise OAuthRefusedError(self.name, response.status_code, _error_of(response))
        if response.status_code >= 300:
            raise OAuthUnavailableError(
                self.name,
                f"the token service answered HTTP {response.status_code}",
                status=response.status_code,
            )
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            raise OAuthUnavailableError(self.name, "the answer is not JSON") from None
        if not isinstance(body, dict):
            raise OAuthUnavailableError(self.name, "the answer is not a JSON object")
        return body

    def _grant(self, body: dict[str, Any]) -> TokenGrant:
        access = body.get("access_token")
        if not isinstance(access, str) or not 0 < len(access) <= MAX_TOKEN_CHARS:
            raise OAuthUnavailableError(self.name, "the token response has no usable access_token")
        token_type = body.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() not in ("bearer", "oauth"):
            raise OAuthUnavailableError(self.name, "the token response has an unknown token_type")
        refresh = body.get("refresh_token")
        if refresh is not None and (
            not isinstance(refresh, str) or not 0 < len(refresh) <= MAX_TOKEN_CHARS
        ):
            raise OAuthUnavailableError(
                self.name, "the token response has a malformed refresh_token"
            )
        expires_in = body.get("expires_in")
        expires_at: dt.datetime | None = None
        if expires_in is not None:
            if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
                raise OAuthUnavailableError(self.name, "the token response has a bad expires_in")
            try:
                seconds = float(expires_in)
            except ValueError:
                raise OAuthUnavailableError(
                    self.name, "the token response has a bad expires_in"
                ) from None
            expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=max(0.0, seconds))
        scope = body.get("scope")
        scopes = tuple(scope.split()) if isinstance(scope, str) else None
        return TokenGrant(
            access_token=access, refresh_token=refresh, expires_at=expires_at, scopes=scopes
        )


def _error_of(response: httpx.Response) -> str | None:
    """The OAuth ``error`` code of a refusal (RFC 6749 5.2), when it is safe to repeat."""
    try:
        body = response.json()
    except ValueError:
        return None
    return safe_error_code(body.get("error")) if isinstance(body, dict) else None
