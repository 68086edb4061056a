"""The OAuth ``state`` of a platform login: signed, expiring, and bound to its browser.

``/login`` issues a state: an HS256 JWT under a key derived from the server's
token key (so it never passes for a join or session token), naming the
platform, the user the account will belong to, and a random nonce. The PKCE
verifier is not sent anywhere: it is HMAC(key, nonce), recomputed at
``/callback``, so any worker sharing the token key finishes a login another
started and no server-side storage is needed. The nonce also goes into an
HttpOnly cookie of the browser that asked; ``/callback`` requires it, so a
login link sent to someone else cannot attach their account to the sender.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt

from signaling.oauth import code_challenge

ISSUER = "parley"
PURPOSE = "oauth_state"
COOKIE_PREFIX = "parley_oauth_"


class StateError(Exception):
    """A ``state`` that does not finish a login; ``code`` says why (for the API)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class LoginState:
    """What a verified state says."""

    platform: str
    user_id: str
    nonce: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class IssuedState:
    """A new login: the state to send, the PKCE pair, and the browser binding."""

    token: str
    verifier: str
    challenge: str
    nonce: str
    expires_at: int


def cookie_name(platform: str) -> str:
    """The name of the cookie binding a platform's login to its browser."""
    return COOKIE_PREFIX + platform


class OAuthStates:
    """Issues and verifies login states; derives each login's PKCE verifier."""

    def __init__(self, key: bytes, ttl_s: int) -> None:
        if len(key) < 32:
            raise ValueError("the state key must be at least 32 bytes")
        self._key = key
        self.ttl_s = ttl_s

    def issue(self, platform: str, user_id: str) -> IssuedState:
        """A state for ``user_id``'s login to ``platform``."""
        nonce = secrets.token_urlsafe(24)
        now = int(time.time())
        exp = now + self.ttl_s
        claims = {
            "iss": ISSUER,
            "typ": PURPOSE,
            "plat": platform,
            "sub": user_id,
            "nonce": nonce,
            "iat": now,
            "exp": exp,
        }
        verifier = self.verifier(nonce)
        return IssuedState(
            token=jwt.encode(claims, self._key, algorithm="HS256"),
            verifier=verifier,
            challenge=code_challenge(verifier),
            nonce=nonce,
            expires_at=exp,
        )

    def verify(self, token: str, platform: str) -> LoginState:
        """The login a state names; ``StateError`` (``state_expired``, ``bad_state``)."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "nonce", "plat", "typ"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise StateError(
                "state_expired", "the login took too long; start it again from /login"
            ) from exc
        except jwt.PyJWTError as exc:
            raise StateError("bad_state", "the state is not one this server issued") from exc
        if claims.get("typ") != PURPOSE or claims.get("plat") != platform:
            raise StateError("bad_state", f"the state is not one of a {platform} login")
        user, nonce = claims.get("sub"), claims.get("nonce")
        if not isinstance(user, str) or not isinstance(nonce, str):
            raise StateError("bad_state", "the state is not one this server issued")
        return LoginState(platform, user, nonce, int(claims["exp"]))

    def verifier(self, nonce: str) -> str:
        """The PKCE verifier of a login (43 characters of base64url, RFC 7636 4.1)."""
        mac = hmac.new(self._key, b"pkce\0" + nonce.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    @staticmethod
    def bound(state: LoginState, cookie: str | None) -> bool:
        """Whether the browser's binding cookie is the one its login set."""
        return cookie is not None and hmac.compare_digest(cookie.encode(), state.nonce.encode())
