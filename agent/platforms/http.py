"""One vendor Web API over httpx, for many users: bearer tokens, one refresh, errors.

``PlatformHttp`` is the edge both music adapters share. Each request carries
the user's access token from ``AccessTokens``; the answers are translated
into ``agent.platforms.base`` errors in one place:

==================================  ===============================================
answer                              what happens
==================================  ===============================================
401                                 ask ``AccessTokens.refreshed`` once, retry; a
                                    second 401 is ``PlatformAuthError``
429 with Retry-After <= a bound     wait that long once and retry; otherwise (or a
                                    second 429) ``PlatformRateLimitedError``
404 that the adapter recognises     the adapter's own error (``NoActiveDeviceError``)
5xx, time-out, connection failure   ``PlatformError(retryable=True)``
other 4xx                           ``PlatformError(retryable=False)``
2xx that is not JSON (``request_``  ``PlatformError(retryable=True)``: "answer is not
``json``)                           JSON" (a proxy's error page, a truncated body)
==================================  ===============================================

Lists are read page by page; an adapter reads at most ``MAX_PAGES`` of one
list and stops early at a page it has already seen (``PageGuard``), so a
vendor whose paging never ends (a stuck cursor, an offset it ignores) costs
a bounded number of requests.

Messages carry the method, the route, the status and the vendor's reason
code when it is a plain token; never a token, a query string (the caller's
words) or the vendor's free text. httpx exceptions are not chained.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from json import dumps
from typing import Any

import httpx

from agent.platforms.base import (
    AccessTokens,
    PlatformAuthError,
    PlatformError,
    PlatformRateLimitedError,
)
from agent.providers.cloud_errors import parse_retry_after, safe_token

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
"""Per request: a platform that does not answer in this long fails retryably."""
DEFAULT_MAX_RETRY_AFTER_S = 2.0
"""A 429 asking to wait at most this long is waited out once; a longer one is raised."""
MAX_PAGES = 40
"""Pages read of one list: 2,000 items at 50 a page (the library sync's bound on liked
tracks); a longer list is cut there."""

ErrorHook = Callable[[httpx.Response, str | None], PlatformError | None]
"""An adapter's own reading of an error answer (response, reason code) -> error, or None."""


def reason_code(response: httpx.Response) -> str | None:
    """The vendor's machine-readable reason in an error body, when it is a plain token.

    Spotify: ``{"error": {"status", "message", "reason"}}``; SoundCloud:
    ``{"code", "message", "errors": [...]}``. Free text is never read.
    """
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error")
    if isinstance(inner, Mapping):
        body = inner
    for key in ("reason", "code", "error"):
        token = safe_token(body.get(key))
        if token:
            return token
    return None


class PlatformHttp:
    """Authenticated requests to one platform's API (see the module docstring).

    ``transport`` replaces httpx's network transport (tests may pass one; the
    loopback fakes are real servers, so the tests here do not need it).
    """

    def __init__(
        self,
        platform: str,
        base_url: str,
        tokens: AccessTokens,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        auth_scheme: str = "Bearer",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if timeout_s <= 0 or max_retry_after_s < 0:
            raise ValueError("timeout must be positive and the Retry-After bound not negative")
        self.platform = platform
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout_s = timeout_s
        self.max_retry_after_s = max_retry_after_s
        self._scheme = auth_scheme
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )
        self.requests = 0
        """Requests sent (retries included), for tests and benchmarks."""

    async def request(
        self,
        method: str,
        path: str,
        user_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        on_error: ErrorHook | None = None,
    ) -> httpx.Response:
        """Send ``method path`` for ``user_id``; the 2xx answer, or a typed error.

        ``path`` is relative to the base URL (``/me/player/play``) or an absolute
        URL under it (a vendor's ``next_href``); anything else is refused before
        a token is sent.
        """
        url = self._url(path)
        route = _route(path)
        token = await self.tokens.access_token(self.platform, user_id)
        refreshed = waited = False
        while True:
            response = await self._send(method, url, route, token, params, json)
            status = response.status_code
            if status < 400:
                return response
            if status == 401 and not refreshed:
                refreshed = True
                token = await self.tokens.refreshed(self.platform, user_id, token)
                continue
            if status == 401:
                raise PlatformAuthError(self.platform, f"{method} {route}: token refused")
            if status == 429:
                retry_after = parse_retry_after(response.headers)
                if not waited and retry_after is not None and retry_after <= self.max_retry_after_s:
                    waited = True
                    await asyncio.sleep(retry_after)
                    continue
                raise PlatformRateLimitedError(self.platform, retry_after)
            raise self._error(method, route, response, on_error)

    async def request_json(
        self,
        method: str,
        path: str,
        user_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        on_error: ErrorHook | None = None,
    ) -> Any:
        """``request``, then the answer's JSON: None for an empty answer (204); a 2xx
        whose body is not JSON is a retryable ``PlatformError`` ("answer is not JSON")."""
        response = await self.request(
            method, path, user_id, params=params, json=json, on_error=on_error
        )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError of a binary body
            raise PlatformError(
                self.platform,
                f"{method} {_route(path)}: answer is not JSON (HTTP {response.status_code})",
                retryable=True,
                status=response.status_code,
            ) from None

    async def _send(
        self,
        method: str,
        url: str,
        route: str,
        token: str,
        params: Mapping[str, Any] | None,
        json: object,
    ) -> httpx.Response:
        self.requests += 1
        headers = {"Authorization": f"{self._scheme} {token}"}
        try:
            return await self._client.request(
                method, url, params=params, json=json, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise PlatformError(
                self.platform,
                f"{method} {route}: no answer within {self.timeout_s:g} s ({type(exc).__name__})",
                retryable=True,
            ) from None
        except (httpx.TransportError, OSError) as exc:
            raise PlatformError(
                self.platform,
                f"{method} {route}: connection failed ({type(exc).__name__})",
                retryable=True,
            ) from None

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            if not path.startswith(self.base_url + "/"):
                raise PlatformError(self.platform, "refused a link outside the API's base URL")
            return path[len(self.base_url) :]
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        return path

    def _error(
        self, method: str, route: str, response: httpx.Response, on_error: ErrorHook | None
    ) -> PlatformError:
        status = response.status_code
        reason = reason_code(response)
        if on_error is not None:
            own = on_error(response, reason)
            if own is not None:
                return own
        tail = f" ({reason})" if reason else ""
        if status >= 500 or status == 408:
            return PlatformError(
                self.platform,
                f"{method} {route}: HTTP {status}: server error{tail}",
                retryable=True,
                status=status,
            )
        what = {403: "forbidden", 404: "not found"}.get(status, "request rejected")
        return PlatformError(
            self.platform, f"{method} {route}: HTTP {status}: {what}{tail}", status=status
        )

    @property
    def is_closed(self) -> bool:
        """Whether ``aclose`` has run."""
        return self._client.is_closed

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        await self._client.aclose()


def _route(path: str) -> str:
    """How a request's path appears in messages: never its query (the caller's words)."""
    return path.split("?", 1)[0] if not path.startswith("http") else "(next page)"


class PageGuard:
    """Bounds the reading of one paginated list: at most ``max_pages`` pages, and none
    that repeats a page already read (see the module docstring).

    The adapter calls ``admit(items)`` with each page it receives (False: a repeat, stop
    before using it) and ``more()`` before asking for the next (False: the bound is
    reached). Either stop is logged once, by platform and route only.
    """

    def __init__(self, platform: str, route: str, max_pages: int = MAX_PAGES) -> None:
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        self.platform = platform
        self.route = route
        self.max_pages = max_pages
        self.pages = 0
        self._seen: set[bytes] = set()

    def admit(self, items: Sequence[Any]) -> bool:
        """Whether the page holding ``items`` is new (it is counted when it is)."""
        digest = hashlib.sha256(
            dumps(items, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).digest()
        if digest in self._seen:
            log.warning("%s: %s repeated a page; the list ends there", self.platform, self.route)
            return False
        self._seen.add(digest)
        self.pages += 1
        return True

    def more(self) -> bool:
        """Whether another page may be asked for."""
        if self.pages < self.max_pages:
            return True
        log.warning(
            "%s: %s has more than %d pages; the list is cut there",
            self.platform,
            self.route,
            self.max_pages,
        )
        return False
