"""Join and session tokens: HS256 JWTs scoped to one room or session, with an expiry.

A session token also carries ``auth_time``: when the chain of sessions it
belongs to began. A returning user's new session continues the chain of the
earlier session whose token it presents (``session_chain``): the new token
copies ``auth_time`` forward, never expires after ``auth_time +
chain_max_s``, and a chain older than ``chain_max_s`` (30 days by default)
is refused, so a token, once leaked, cannot renew itself for ever: the user
starts a new chain by signing in again (a new anonymous session that links
its account, or one an admin names the user of).

The HMAC key is ``PARLEY_JWT_SECRET`` when set; otherwise it is generated once
and kept in ``PARLEY_DATA_DIR/jwt_secret`` (mode 0600), so tokens outlive a
restart and every worker sharing the data directory accepts the others'.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from pydantic import SecretStr

from store.secret_file import SecretFileError, load_or_create

log = logging.getLogger(__name__)

__all__ = [
    "SECRET_FILE",
    "Grant",
    "SecretFileError",
    "TokenError",
    "TokenService",
    "bearer",
    "load_or_create_secret",
]

ISSUER = "parley"
SECRET_FILE = "jwt_secret"
"""Name of the generated key's file in the data directory."""
MIN_SECRET_BYTES = 32
DEFAULT_CHAIN_MAX_S = 30 * 24 * 3600
"""How long a chain of sessions may be continued after it began (``auth_time``)."""
CLOCK_SKEW_S = 60
"""How far in the future an ``auth_time`` may lie (another worker's clock)."""


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


def load_or_create_secret(data_dir: Path) -> str:
    """The token key kept in ``data_dir``, generated on first use.

    See ``store.secret_file.load_or_create``: created atomically with mode
    0600 and never overwritten, so concurrent workers starting together all
    end up with the first one's key. A key file readable by other users is
    made 0600 (with a warning: the key may have leaked; delete the file to
    rotate it). A key file owned by another user, a symbolic link or one
    holding fewer than 32 bytes is refused with ``SecretFileError``.
    """
    return load_or_create(
        data_dir / SECRET_FILE,
        lambda: secrets.token_urlsafe(48),
        min_bytes=MIN_SECRET_BYTES,
        leaked_hint=(
            "The token key may have leaked: delete the file and restart to rotate it "
            "(issued tokens then stop working)."
        ),
    )


class TokenService:
    """Mints and verifies room-scoped join tokens and session tokens."""

    def __init__(self, secret: str, ttl_s: int, *, chain_max_s: int = DEFAULT_CHAIN_MAX_S) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError("the token secret must be at least 32 bytes (RFC 7518 3.2)")
        if chain_max_s <= 0:
            raise ValueError("chain_max_s must be positive")
        self._secret = secret
        self.ttl_s = ttl_s
        self.chain_max_s = chain_max_s

    @classmethod
    def from_settings(
        cls,
        secret: SecretStr | None,
        data_dir: Path,
        ttl_s: int,
        *,
        chain_max_s: int = DEFAULT_CHAIN_MAX_S,
    ) -> TokenService:
        """A service keyed by ``secret`` (``PARLEY_JWT_SECRET``) when set, else by the key
        kept in ``data_dir`` (see ``load_or_create_secret``)."""
        key = secret.get_secret_value() if secret is not None else load_or_create_secret(data_dir)
        return cls(key, ttl_s, chain_max_s=chain_max_s)

    def mint(self, room_id: str, subject: str = "caller") -> tuple[str, int]:
        """A token for ``room_id``; returns ``(token, expires_at)``."""
        now = int(time.time())
        exp = now + self.ttl_s
        claims = {"iss": ISSUER, "sub": subject, "room": room_id, "iat": now, "exp": exp}
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def mint_session(
        self, session_id: str, subject: str = "caller", *, auth_time: int | None = None
    ) -> tuple[str, int]:
        """A token that owns ``session_id`` (read its history, attach calls and chats).

        ``auth_time`` is when the chain this session continues began (from
        ``session_chain``); None starts a new chain now. The token never outlives its
        chain: it expires at ``auth_time + chain_max_s`` at the latest.
        """
        now = int(time.time())
        began = now if auth_time is None else auth_time
        exp = min(now + self.ttl_s, began + self.chain_max_s)
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "session": session_id,
            "iat": now,
            "exp": exp,
            "auth_time": began,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def session_chain(self, token: str | None) -> tuple[str, int]:
        """The session an earlier session token owns and its chain's ``auth_time``, for a
        new session that continues it (see the module docstring).

        ``TokenError`` as ``session_of``, and 401 when the chain began more than
        ``chain_max_s`` ago.
        """
        claims = self._decode(token)
        session = claims.get("session")
        if not isinstance(session, str) or not session:
            raise TokenError("a session token is required", 403)
        began = claims.get("auth_time", claims.get("iat"))
        now = int(time.time())
        if not isinstance(began, int) or isinstance(began, bool) or began > now + CLOCK_SKEW_S:
            raise TokenError("invalid token", 401)
        if now - began > self.chain_max_s:
            raise TokenError("the session chain has expired: sign in again", 401)
        return session, began

    def verify_session(self, token: str | None, session_id: str) -> None:
        """Check a session token: 401 if missing, invalid or expired; 403 if not this session's."""
        claims = self._decode(token)
        if claims.get("session") != session_id:
            raise TokenError("token is not valid for this session", 403)

    def session_of(self, token: str | None) -> str:
        """The session a session token owns: 401 if it is missing, invalid or expired,
        403 if it is a valid token of another kind (a room's join token)."""
        session = self._decode(token).get("session")
        if not isinstance(session, str) or not session:
            raise TokenError("a session token is required", 403)
        return session

    def subkey(self, purpose: str) -> bytes:
        """A key for another signing purpose (e.g. OAuth ``state``), derived from the token
        key so that it never verifies join or session tokens and the key never leaves."""
        return hmac.new(
            self._secret.encode(), f"parley/{purpose}".encode(), hashlib.sha256
        ).digest()

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
