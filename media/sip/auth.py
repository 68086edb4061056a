"""Digest authentication of INVITEs (RFC 3261 22.4 with RFC 2617 / RFC 7616).

The server challenges with ``401 Unauthorized`` and a ``WWW-Authenticate:
Digest realm=..., nonce=..., qop="auth", algorithm=MD5`` header, and checks
the ``Authorization`` of the retried request.

- **Nonces are stateless**: ``<issued>.<HMAC-SHA256(secret, issued)>`` with
  a per-process random secret, so any nonce this process issued can be
  verified without remembering it, and nothing else can pass as one. A nonce
  older than ``nonce_ttl_s`` is *stale*: correct credentials over it get a
  fresh challenge with ``stale=TRUE`` (the client retries without asking
  the user).
- **Replays** within a nonce's life are refused: ``qop=auth`` requires a
  nonce count (``nc``) that grows; the highest count seen is kept for a
  bounded number of recent nonces.
- ``algorithm`` MD5 (the default, and what SIP phones implement) and
  SHA-256 (RFC 7616) are verified; ``-sess`` variants and ``auth-int`` are
  not supported.
- Comparisons are constant-time and an unknown user costs the same work as
  a known one. Nothing here logs; the caller logs only the outcome.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from sipmessage import URI, AuthChallenge, AuthCredentials, AuthParameters

DEFAULT_NONCE_TTL_S = 300.0
MAX_TRACKED_NONCES = 4096
"""Nonces whose highest nonce count is remembered (least recently used forgotten)."""

_HASHES: Mapping[str, Callable[[bytes], str]] = {
    "md5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "sha-256": lambda data: hashlib.sha256(data).hexdigest(),
}


class AuthOutcome(enum.Enum):
    """Result of checking a request's credentials."""

    OK = "ok"
    MISSING = "missing"
    """No Authorization header: challenge."""
    INVALID = "invalid"
    """Wrong user, password, realm, URI, nonce or a replay: challenge again."""
    STALE = "stale"
    """Right credentials over an expired nonce: challenge with stale=TRUE."""


class DigestAuthenticator:
    """Issues digest challenges and verifies credentials for a realm and a user table.

    ``users`` maps user names to passwords (kept in memory only). ``clock``
    is injectable so nonce expiry can be tested without waiting.
    """

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str],
        *,
        nonce_ttl_s: float = DEFAULT_NONCE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not users:
            raise ValueError("digest authentication needs at least one user")
        if nonce_ttl_s <= 0:
            raise ValueError("the nonce lifetime must be positive")
        self.realm = realm
        self._users = dict(users)
        self._ttl = nonce_ttl_s
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._counts: OrderedDict[str, int] = OrderedDict()

    def challenge(self, *, stale: bool = False) -> AuthChallenge:
        """A ``WWW-Authenticate`` value with a fresh nonce."""
        parameters = AuthParameters(
            realm=self.realm, nonce=self._new_nonce(), qop="auth", algorithm="MD5"
        )
        if stale:
            parameters = parameters.replace(stale="TRUE")
        return AuthChallenge(scheme="Digest", parameters=parameters)

    def _new_nonce(self) -> str:
        issued = f"{int(self._clock() * 1000):x}"
        return f"{issued}.{self._mac(issued)}"

    def _mac(self, issued: str) -> str:
        return hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:32]

    def _nonce_age(self, nonce: str) -> float | None:
        """Seconds since this process issued ``nonce``; None if it did not."""
        issued, _, mac = nonce.partition(".")
        if not issued or not hmac.compare_digest(mac.encode(), self._mac(issued).encode()):
            return None
        try:
            return self._clock() - int(issued, 16) / 1000
        except ValueError:
            return None

    def verify(self, method: str, request_uri: URI, authorization: str | None) -> AuthOutcome:
        """Check the ``Authorization`` header value of a ``method`` request for ``request_uri``."""
        if authorization is None:
            return AuthOutcome.MISSING
        try:
            credentials = AuthCredentials.parse(authorization)
        except ValueError:
            return AuthOutcome.INVALID
        params = credentials.parameters
        if credentials.scheme.lower() != "digest" or params is None:
            return AuthOutcome.INVALID
        try:
            username, realm, nonce = params["username"], params["realm"], params["nonce"]
            uri, response = params["uri"], params["response"]
            qop, nc, cnonce = params["qop"], params["nc"], params["cnonce"]
        except KeyError:
            return AuthOutcome.INVALID
        digest = _HASHES.get(params.get("algorithm", "MD5").lower())
        if (
            digest is None
            or realm != self.realm
            or qop.lower() != "auth"
            or len(nc) != 8
            or not _is_hex(nc)
            or not cnonce
            or not _same_uri(uri, request_uri)
        ):
            return AuthOutcome.INVALID
        age = self._nonce_age(nonce)
        if age is None or age < 0:
            return AuthOutcome.INVALID

        known = username in self._users
        password = self._users.get(username, secrets.token_hex(16))
        ha1 = digest(f"{username}:{realm}:{password}".encode())
        ha2 = digest(f"{method}:{uri}".encode())
        expected = digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
        if not hmac.compare_digest(expected.encode(), response.lower().encode()) or not known:
            return AuthOutcome.INVALID
        if age > self._ttl:
            return AuthOutcome.STALE
        return AuthOutcome.OK if self._count(nonce, int(nc, 16)) else AuthOutcome.INVALID

    def _count(self, nonce: str, count: int) -> bool:
        """Record a nonce count; False for a count already used (a replay)."""
        previous = self._counts.get(nonce, 0)
        if count <= previous:
            return False
        self._counts[nonce] = count
        self._counts.move_to_end(nonce)
        while len(self._counts) > MAX_TRACKED_NONCES:
            self._counts.popitem(last=False)
        return True


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


def _same_uri(value: str, request_uri: URI) -> bool:
    """Whether the credentials' ``uri`` names the request's URI (RFC 2617 3.2.2.5)."""
    if value == str(request_uri):
        return True
    try:
        return URI.parse(value) == request_uri
    except ValueError:
        return False


def digest_response(
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    challenge: AuthChallenge,
    cnonce: str,
    nc: int = 1,
) -> AuthCredentials:
    """Client side: the credentials answering ``challenge`` (used by tests and tools)."""
    params = challenge.parameters
    algorithm = params.get("algorithm", "MD5")
    digest = _HASHES[algorithm.lower()]
    realm, nonce = params["realm"], params["nonce"]
    count = f"{nc:08x}"
    ha1 = digest(f"{username}:{realm}:{password}".encode())
    ha2 = digest(f"{method}:{uri}".encode())
    response = digest(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}".encode())
    return AuthCredentials(
        scheme="Digest",
        parameters=AuthParameters(
            username=username,
            realm=realm,
            nonce=nonce,
            uri=uri,
            response=response,
            algorithm=algorithm,
            qop="auth",
            nc=count,
            cnonce=cnonce,
        ),
    )
