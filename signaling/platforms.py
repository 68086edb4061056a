"""The platforms of one app: OAuth clients, login states, access tokens and connect hooks.

Built in the app's lifespan (``Platforms.open``) and closed with it. The
``on_connected`` hooks are how other parts react to a newly linked account
(the library sync attaches its job there): each gets the account's
token-free ``AccountInfo`` right after it is stored. Hooks run in the
callback request, so they must be quick (enqueue work, never do it); one that
fails is logged and does not undo the link.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from signaling.oauth import OAuthClient
from signaling.oauth_state import OAuthStates
from signaling.platform_settings import OAuthClientSettings
from signaling.platform_tokens import PlatformTokens
from signaling.settings import ServerSettings
from signaling.tokens import TokenService
from store.platform_accounts import AccountInfo, PlatformAccountRepository

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0
"""Budget of one request to a platform's OAuth endpoints."""

ConnectedHook = Callable[[AccountInfo], Awaitable[None]]
"""Called with a newly linked (or re-linked) account."""
DisconnectedHook = Callable[[str, str], Awaitable[None]]
"""Called with ``(user_id, platform)`` of an account just removed."""


@dataclass(slots=True)
class Platforms:
    """What the platform routes and the agent's tools share."""

    settings: dict[str, OAuthClientSettings]
    """Every known platform by name, configured or not."""
    clients: dict[str, OAuthClient]
    """The configured platforms' OAuth clients."""
    states: OAuthStates
    tokens: PlatformTokens
    """Valid access tokens of users' accounts (``agent.platforms.base.AccessTokens``)."""
    accounts: PlatformAccountRepository
    http: httpx.AsyncClient
    on_connected: list[ConnectedHook] = field(default_factory=list)
    """Hooks run after an account is linked (see the module docstring)."""
    on_disconnected: list[DisconnectedHook] = field(default_factory=list)
    """Hooks run after an account is removed (the library sync forgets what it copied)."""

    @classmethod
    def open(
        cls,
        settings: ServerSettings,
        accounts: PlatformAccountRepository,
        tokens: TokenService,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Platforms:
        """The platforms ``settings`` configure; ``close()`` releases the HTTP client."""
        http = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT_S, follow_redirects=False, transport=transport
        )
        known = settings.platforms()
        clients = {
            name: OAuthClient(name, conf, http) for name, conf in known.items() if conf.configured
        }
        return cls(
            settings=known,
            clients=clients,
            states=OAuthStates(tokens.subkey("oauth-state"), settings.oauth_state_ttl_s),
            tokens=PlatformTokens(accounts, clients),
            accounts=accounts,
            http=http,
        )

    async def connected(self, account: AccountInfo) -> None:
        """Run the ``on_connected`` hooks (a failing hook is logged, never raised)."""
        for hook in list(self.on_connected):
            try:
                await hook(account)
            except Exception as exc:  # a hook's failure must not undo the link
                log.warning("%s: a connect hook failed (%s)", account.platform, type(exc).__name__)

    async def disconnected(self, user_id: str, platform: str) -> None:
        """Run the ``on_disconnected`` hooks (a failing hook is logged, never raised)."""
        for hook in list(self.on_disconnected):
            try:
                await hook(user_id, platform)
            except Exception as exc:  # the account is gone either way
                log.warning("%s: a disconnect hook failed (%s)", platform, type(exc).__name__)

    async def aclose(self) -> None:
        """Close the HTTP client; idempotent."""
        await self.http.aclose()
