"""What the OpenAPI document says about errors and the bodies routes read themselves.

Every error the API answers has the body ``{"error": code, "detail": text}``
(``ErrorOut``); ``error_responses(400, 401, ...)`` is the ``responses=``
argument that declares those statuses on a route, so the published schema
lists every status a client can get (FastAPI adds 422 by itself for routes
whose parameters it validates). ``raw_body`` documents a request body a route
reads from ``Request`` rather than through a model.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, Field

ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Bad request: the body or a parameter is not usable (see ``detail``).",
    401: "No credential, or one that is invalid, expired or revoked.",
    403: "The credential is valid but not for this resource or scope.",
    404: "No such resource.",
    405: "Method not allowed; ``Allow`` lists the methods of the path.",
    409: "The resource is not in a state that allows this.",
    413: "The request body is over the size limit.",
    415: "Unsupported media type (of the body, or of uploaded audio).",
    429: "Rate limited or over a quota; retry after ``Retry-After`` seconds.",
    502: "A model provider failed and will not succeed on retry.",
    503: "Unavailable for now (capacity, store or provider); retry later.",
}
"""The error statuses the API answers, and what each means."""

_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (when the condition is temporary).",
        "schema": {"type": "integer"},
    }
}


class ErrorOut(BaseModel):
    """The body of every error answer (some add fields, such as ``retry_after_s``)."""

    error: str = Field(description="Machine-readable code, such as ``bad_sdp``.")
    detail: str = Field(description="What went wrong, for people.")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer each of ``statuses`` with an error.

    Raises ``KeyError`` for a status without a description in ``ERROR_DESCRIPTIONS``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        if status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {
                    "description": "The authentication scheme (``Bearer``).",
                    "schema": {"type": "string"},
                }
            }
        out[status] = entry
    return out


def raw_body(
    content: dict[str, dict[str, Any]], *, description: str, required: bool = True
) -> dict[str, Any]:
    """The ``openapi_extra=`` that documents a body a route reads itself.

    ``content`` maps media types to their OpenAPI media type objects, e.g.
    ``{"audio/wav": {"schema": {"type": "string", "format": "binary"}}}``.
    """
    return {"requestBody": {"description": description, "required": required, "content": content}}


BINARY: Final = {"schema": {"type": "string", "format": "binary"}}
"""The media type object of an opaque binary body."""
