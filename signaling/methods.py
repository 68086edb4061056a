"""HTTP methods per path: ``OPTIONS``, ``HEAD`` and 405 answers as RFC 9110 asks.

Starlette routes each (path, method) pair on its own, so on a path served
by several routes (``GET`` and ``DELETE /v1/rooms/{id}``) a request with
another method got a 405 whose ``Allow`` named the first route's methods
only, ``OPTIONS`` was answered 405, and ``HEAD`` on a ``GET`` route was 405.
``MethodsMiddleware`` fixes the three, for every routed path:

- ``OPTIONS`` (not a CORS preflight) is answered 204 with ``Allow`` naming
  every method of the path (RFC 9110 section 9.3.7);
- a CORS preflight (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) is left to the CORS middleware, which
  sits outside this one when CORS is configured; without it the preflight is
  refused like any other unsupported method;
- every 405 carries the full ``Allow`` list (section 15.5.6) and the API's
  error body ``{"error": "method_not_allowed", "detail": ...}``;
- ``HEAD`` on a path with ``GET`` is answered as the ``GET``, without the
  body (section 9.3.2).

Paths that no route serves (404) and mounted apps (``/static``) are left
as they are.
"""

from __future__ import annotations

import json
from typing import Final

from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHOD_ORDER: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The order methods are listed in ``Allow``."""
_PROBED: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
"""The methods a path is probed for (OPTIONS is answered here, for every routed path)."""


def _serves(router: Router, scope: Scope, method: str) -> bool:
    """Whether a route (of any included router) answers ``method`` on the scope's path.

    Each top-level route is asked to match the path with that method: a plain
    route and FastAPI's included routers alike answer ``Match.FULL`` only for
    a method they route. Mounts (static files) are not API paths: skipped.
    """
    probe = {**scope, "method": method}
    return any(
        not isinstance(route, Mount) and route.matches(probe)[0] is Match.FULL
        for route in router.routes
    )


def allowed_methods(router: Router, scope: Scope) -> list[str] | None:
    """The methods the path of ``scope`` answers, ``Allow``-ordered; None if no route has it.

    Includes ``HEAD`` where ``GET`` is (answered here when no route does), and
    ``OPTIONS`` (answered here).
    """
    methods = [m for m in _PROBED if _serves(router, scope, m)]
    if not methods:
        return None
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    methods.append("OPTIONS")
    return [m for m in METHOD_ORDER if m in methods]


def is_preflight(scope: Scope) -> bool:
    """Whether an ``OPTIONS`` request is a CORS preflight."""
    names = {name for name, _ in scope.get("headers", [])}
    return b"origin" in names and b"access-control-request-method" in names


class MethodsMiddleware:
    """ASGI middleware answering ``OPTIONS``, ``HEAD`` and 405 per path (see the module doc)."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "OPTIONS" and not is_preflight(scope):
            allow = allowed_methods(self.router, scope)
            if allow is not None:
                await _send(send, 204, allow, b"")
                return
        if method == "HEAD" and not _serves(self.router, scope, "HEAD"):
            allow = allowed_methods(self.router, scope)
            if allow is not None and "GET" in allow:
                await self.app({**scope, "method": "GET"}, receive, _without_body(send))
                return
        await self.app(scope, receive, self._fix_405(scope, send))

    def _fix_405(self, scope: Scope, send: Send) -> Send:
        """``send``, with a 405 answer replaced by one that lists every method of the path."""
        replaced = False

        async def fixed(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = allowed_methods(self.router, scope)
                if allow is not None:
                    replaced = True
                    detail = f"{scope['method']} is not allowed here; allowed: {', '.join(allow)}"
                    body = json.dumps({"error": "method_not_allowed", "detail": detail})
                    await _send(send, 405, allow, body.encode())
                    return
            if replaced:
                return  # the original 405's body
            await send(message)

        return fixed


def _without_body(send: Send) -> Send:
    """``send`` for a ``HEAD`` answered as ``GET``: headers kept, body dropped."""

    async def head(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return head


async def _send(send: Send, status: int, allow: list[str], body: bytes) -> None:
    headers = [(b"allow", ", ".join(allow).encode())]
    if body:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
