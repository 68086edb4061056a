"""Join tokens: HS256 JWTs scoped to one room, with an expiry."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ISSUER = "parley"


class TokenError(Exception):
    """A token that does not grant access. ``status`` is 401 or 403."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    room_id: str
    subject: str
    expires_at: int


class TokenService:
    """Mints and verifies room-scoped join tokens."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("the token secret must be at least 32 bytes (RFC 7518 3.2)")
        self._secret = secret
        self.ttl_s = ttl_s

    def mint(self, room_id: str, subject: str = "caller") -> tuple[str, int]:
        """A token for ``room_id``; returns ``(token, expires_at)``."""
        now = int(time.time())
        exp = now + self.ttl_s
        claims = {"iss": ISSUER, "sub": subject, "room": room_id, "iat": now, "exp": exp}
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def mint_session(self, session_id: str, subject: str = "caller") -> tuple[str, int]:
        """A token that owns ``session_id`` (read its history, attach calls and chats)."""
        now = int(time.time())
        exp = now + self.ttl_s
        claims = {"iss": ISSUER, "sub": subject, "session": session_id, "iat": now, "exp": exp}
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def verify_session(self, token: str | None, session_id: str) -> None:
        """Check a session token: 401 if missing, invalid or expired; 403 if not this session's."""
        claims = self._decode(token)
        if claims.get("session") != session_id:
            raise TokenError("token is not valid for this session", 403)

    def _decode(self, token: str | None) -> dict[str, object]:
        if not token:
            raise TokenError("missing bearer token", 401)
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired", 401) from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token", 401) from exc
        return claims

    def verify(self, token: str | None, room_id: str) -> Grant:
        """Check a token for ``room_id``.

        Raises ``TokenError`` 401 if it is missing, invalid or expired, 403 if
        it belongs to another room.
        """
        claims = self._decode(token)
        if claims.get("room") != room_id:
            raise TokenError("token is not valid for this room", 403)
        exp = claims["exp"]
        return Grant(
            room_id=room_id,
            subject=str(claims["sub"]),
            expires_at=int(exp) if isinstance(exp, int | float | str) else 0,
        )


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if any."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
