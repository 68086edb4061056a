"""``/v1/keys``: create, list and revoke API keys (admin scope).

The admin scope is held by admin keys and by ``PARLEY_ADMIN_TOKEN``, the
bootstrap credential an operator uses to create the first keys. A key's
secret is in the answer to its creation only; the store keeps a hash.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from signaling.openapi import error_responses
from signaling.state import ApiError, State
from store.apikeys import SCOPES, ApiKeyError

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyIn(BaseModel):
    """Body of ``POST /v1/keys``."""

    name: str = Field(..., min_length=1, max_length=200)
    scopes: list[str] = Field(default_factory=lambda: ["calls"], min_length=1, max_length=4)
    """Any of ``calls`` and ``admin``."""
    max_calls: int | None = Field(None, ge=1, le=100_000)
    """Concurrent calls the key's rooms may hold (None: the server-wide cap only)."""


@router.post("", status_code=201, responses=error_responses(400, 401, 403, 503))
async def create_key(
    body: KeyIn, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Create a key; ``key`` (``pk_<id>_<secret>``) is shown this once: keep it."""
    await st.access.require(authorization, "admin")
    try:
        issued = await st.store.keys.create(body.name, body.scopes, max_calls=body.max_calls)
    except ApiKeyError as exc:
        raise ApiError(400, "bad_key", f"{exc} (scopes: {', '.join(SCOPES)})") from exc
    return {**issued.info.to_dict(), "key": issued.key}


@router.get("", responses=error_responses(401, 403, 503))
async def list_keys(
    st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Every key, oldest first (never a secret)."""
    await st.access.require(authorization, "admin")
    return {"keys": [info.to_dict() for info in await st.store.keys.list_keys()]}


@router.delete("/{key_id}", responses=error_responses(401, 403, 404, 503))
async def revoke_key(
    key_id: str, st: State, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """Revoke a key: it is refused at once on this worker, within seconds on the others,
    and the rooms it created accept no new calls."""
    await st.access.require(authorization, "admin")
    info = await st.store.keys.revoke(key_id) if len(key_id) <= 32 else None
    if info is None:
        raise ApiError(404, "key_not_found", "no such key")
    return info.to_dict()
