"""Join and session tokens: HS256 JWTs scoped to one room or session, with an expiry.

The HMAC key is ``PARLEY_JWT_SECRET`` when set; otherwise it is generated once
and kept in ``PARLEY_DATA_DIR/jwt_secret`` (mode 0600), so tokens outlive a
restart and every worker sharing the data directory accepts the others'.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from pydantic import SecretStr

log = logging.getLogger(__name__)

ISSUER = "parley"
SECRET_FILE = "jwt_secret"
"""Name of the generated key's file in the data directory."""
MIN_SECRET_BYTES = 32


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


class SecretFileError(Exception):
    """The key file in the data directory cannot be used safely (the message says why)."""


def load_or_create_secret(data_dir: Path) -> str:
    """The token key kept in ``data_dir``, generated on first use.

    Creation is atomic and never overwrites: the key is written to a private
    temporary file (mode 0600) and hard-linked into place, so concurrent
    workers starting together all end up with the first one's key and no
    reader ever sees a partial file. A key file readable by other users is
    made 0600 (with a warning: the key may have leaked; delete the file to
    rotate it). A key file owned by another user, a symbolic link or one
    holding fewer than 32 bytes is refused with ``SecretFileError``.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    _publish_secret(path, secrets.token_urlsafe(48))
    return _read_secret(path)


def _publish_secret(path: Path, secret: str) -> None:
    """Create ``path`` holding ``secret`` unless it exists; never a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{SECRET_FILE}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic; fails if another process published first
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            _create_exclusive(path, secret)  # a file system without hard links
        with contextlib.suppress(OSError):  # make the new name durable (POSIX)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_exclusive(path: Path, secret: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_secret(path: Path) -> str:
    """Read the key file, checking its owner, type and mode (``FileNotFoundError`` if none)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecretFileError(f"{path} is a symbolic link; refusing to use it") from exc
        raise
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"{path} is not a regular file")
        getuid = getattr(os, "getuid", None)
        if getuid is not None and info.st_uid != getuid():
            raise SecretFileError(
                f"{path} belongs to another user (uid {info.st_uid}); refusing to use it"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            os.chmod(f.fileno(), 0o600)
            log.warning(
                "%s was accessible to other users (mode %03o); it is now 0600. The token key "
                "may have leaked: delete the file and restart to rotate it (issued tokens "
                "then stop working).",
                path,
                mode,
            )
        secret = f.read().strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SecretFileError(
            f"{path} holds no usable key (fewer than {MIN_SECRET_BYTES} bytes); "
            "delete it to generate a new one"
        )
    return secret


class TokenService:
    """Mints and verifies room-scoped join tokens and session tokens."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError("the token secret must be at least 32 bytes (RFC 7518 3.2)")
        self._secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, secret: SecretStr | None, data_dir: Path, ttl_s: int) -> TokenService:
        """A service keyed by ``secret`` (``PARLEY_JWT_SECRET``) when set, else by the key
        kept in ``data_dir`` (see ``load_or_create_secret``)."""
        if secret is not None:
            return cls(secret.get_secret_value(), ttl_s)
        return cls(load_or_create_secret(data_dir), ttl_s)

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
