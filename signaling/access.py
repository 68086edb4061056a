"""Who may do what: API keys, their scopes, the bootstrap admin token and the open mode.

A request names its caller with ``Authorization: Bearer ...``:

- an API key (``pk_<id>_<secret>``, see ``store.apikeys``) with the scope
  ``calls`` (create rooms and sessions, place calls, chat, STT/TTS) or
  ``admin`` (everything: keys, every session, SIP admin);
- ``PARLEY_ADMIN_TOKEN``, the bootstrap admin credential: it is checked by the
  same code and grants the ``admin`` scope, like an admin key;
- a join or session token (a JWT, ``eyJ...``), which is not an API credential:
  it grants one room or one session, checked by ``signaling.tokens``.

Whether anonymous callers may create rooms and sessions is ``keys_required``:
by default (``PARLEY_REQUIRE_KEYS=auto``) only a server bound to loopback is
open; ``access_summary`` is the start-up line that says which.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from signaling.settings import ServerSettings
from signaling.tokens import TokenError, bearer
from store.apikeys import ApiKeyRepository, KeyInfo, is_api_key

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from signaling.state import AppState


class AccessError(TokenError):
    """A request without the credential it needs: 401 (none, unknown, revoked) or 403
    (a valid credential without the scope). Answered like a ``TokenError``."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request, as its credential names it."""

    name: str
    scopes: frozenset[str]
    key_id: str | None = None
    """The API key (None: anonymous, or the bootstrap admin token)."""
    max_calls: int | None = None
    """The key's concurrent-call quota (None: the server-wide cap only)."""

    def allows(self, scope: str) -> bool:
        """Whether the principal has ``scope`` (``admin`` has every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    @classmethod
    def of_key(cls, info: KeyInfo) -> Principal:
        """The principal of a verified API key."""
        return cls(info.name, frozenset(info.scopes), info.id, info.max_calls)


ANONYMOUS = Principal("anonymous", frozenset({"calls"}))
"""A caller without a key on a server that does not require keys."""
BOOTSTRAP_ADMIN = Principal("PARLEY_ADMIN_TOKEN", frozenset({"admin"}))
"""The holder of ``PARLEY_ADMIN_TOKEN``."""


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def keys_required(settings: ServerSettings) -> bool:
    """Whether creating rooms and sessions needs an API key (see ``require_keys``)."""
    if settings.require_keys == "auto":
        return not is_loopback(settings.host)
    return settings.require_keys == "true"


def access_summary(settings: ServerSettings) -> str:
    """The one start-up log line that says who may create rooms and sessions (no secret)."""
    mode = f"PARLEY_REQUIRE_KEYS={settings.require_keys}"
    admin = "bootstrap admin token set" if settings.admin_token else "no bootstrap admin token"
    if keys_required(settings):
        return (
            f"access: API keys required to create rooms and sessions "
            f"(listening on {settings.host}, {mode}; {admin})"
        )
    if is_loopback(settings.host):
        return (
            f"access: open to anonymous callers on loopback {settings.host} ({mode}; {admin}); "
            "API keys become required as soon as it listens on another address"
        )
    return (
        f"access: WARNING open to anonymous callers on {settings.host} ({mode}; {admin}): "
        "anyone who reaches it can create rooms and sessions"
    )


class AccessControl:
    """Resolves bearer credentials to principals and enforces scopes."""

    def __init__(self, settings: ServerSettings, keys: ApiKeyRepository) -> None:
        self.keys = keys
        self.required = keys_required(settings)
        self._admin = (
            settings.admin_token.get_secret_value().encode() if settings.admin_token else None
        )

    async def identify(self, token: str | None) -> Principal | None:
        """The principal an API credential names; None when ``token`` is none (absent, or a
        join/session token). ``AccessError`` 401 for an unknown, wrong or revoked key."""
        if not token:
            return None
        if self._admin is not None and hmac.compare_digest(token.encode(), self._admin):
            return BOOTSTRAP_ADMIN
        if not is_api_key(token):
            return None
        info = await self.keys.verify(token)
        if info is None:
            raise AccessError("invalid or revoked API key", 401)
        return Principal.of_key(info)

    async def require(self, authorization: str | None, scope: str) -> Principal:
        """The caller of a request that needs ``scope`` (``calls`` or ``admin``).

        Without an API credential: ``ANONYMOUS`` where keys are not required and
        the scope is ``calls``, else 401. A credential without the scope: 403.
        """
        principal = await self.identify(bearer(authorization))
        if principal is None:
            if scope == "calls" and not self.required:
                return ANONYMOUS
            raise AccessError(f"an API key with the {scope} scope is required", 401)
        if not principal.allows(scope):
            raise AccessError(f"this API key lacks the {scope} scope", 403)
        return principal

    async def is_admin(self, token: str | None) -> bool:
        """Whether ``token`` is an admin credential (False for none, or a JWT; an unknown
        or revoked key raises ``AccessError`` 401)."""
        principal = await self.identify(token)
        return principal is not None and principal.allows("admin")


async def guard(
    st: AppState,
    conn: HTTPConnection,
    authorization: str | None,
    *,
    bucket: str,
    scope: str = "calls",
) -> Principal:
    """Admit a request that needs ``scope``, within the ``bucket`` rate limit.

    The client address is counted first (so a flood of bogus keys is limited
    before any key is looked up), then the credential is checked, then the
    API key is counted. Raises ``RateLimitedError`` (429) or ``AccessError``.
    """
    await st.limits.hit(bucket, address=st.limits.client_address(conn))
    principal = await st.access.require(authorization, scope)
    if principal.key_id is not None:
        await st.limits.hit(bucket, key_id=principal.key_id)
    return principal
