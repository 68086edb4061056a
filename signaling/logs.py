"""The server's logging: one handler on the root logger, redaction, correlation ids.

``log_config(level, fmt)`` builds a ``logging.config.dictConfig`` dict for
the root logger and uvicorn's loggers (``uvicorn``, ``uvicorn.error``,
``uvicorn.access``), ready for ``uvicorn.run(..., log_config=...)``: only
strings and import paths, so uvicorn can apply it again in each worker
process. ``configure_logging`` applies it at once as well (so start-up lines
before uvicorn's own set-up are formatted the same way).

Formats (``PARLEY_LOG_FORMAT``): ``text`` (the default, for a terminal) or
``json`` (one object a line: ``ts``, ``level``, ``logger``, ``message``,
``pid``, ``request_id`` and ``call_id`` when set, ``http`` on access lines,
``exc`` with the traceback).

Nothing secret reaches a line: ``RedactFilter`` (on uvicorn's loggers, so
every handler sees clean records, and on the handler for all the others)
replaces the values of sensitive query parameters (``?token=...``), of
``key=value`` / ``"key": "value"`` pairs named like secrets, ``Bearer``/
``Basic`` credentials, JWTs, passwords in URLs and well-known API key
shapes; the formatters redact their whole output once more.
``PayloadDumpFilter`` drops the WebSocket library's frame dumps at DEBUG
(they carry transcripts and replies). Transcripts and reply texts are never
logged by the project itself; the tests grep whole calls' logs for them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, cast

from signaling.correlation import current_call, current_request_id

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_FORMAT_ENV = "PARLEY_LOG_FORMAT"
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
"""Level names accepted by ``log_config`` (uvicorn's, ``trace`` included)."""

REDACTED = "[redacted]"

QUERY_SECRETS = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "session_token",
    "join_token",
    "key",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
    "code",
    "state",
    "signature",
    "sig",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "jwt",
)
"""Query parameters whose values are never logged (also any ``*_token``, ``*-key``...)."""

_SECRET_WORD = (
    r"(?:token|key|apikey|secret|password|passwd|pwd|signature|authorization|credentials?|jwt)"
)
# parameter names: the listed ones, and any name ending in "_<secret word>" / "-<secret word>"
_QUERY_NAME = rf"(?:{'|'.join(QUERY_SECRETS)}|[\w.-]*[_.-]{_SECRET_WORD})"
_VALUE = r"[^\s&#;,\"'<>()\[\]{}]+"

_QUERY_PARAM = re.compile(rf"(?<=[?&;])({_QUERY_NAME})=({_VALUE})", re.IGNORECASE)
_CREDENTIAL = re.compile(r"\b(Bearer|Basic|Digest|Token)(\s+)([A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
_NAMED_SECRET = re.compile(
    rf"(?<![\w.-])((?:[\w-]*[_-])?{_SECRET_WORD})([\"']?\s*[:=]\s*[\"']?)({_VALUE})",
    re.IGNORECASE,
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/@:]*(?::[^\s/@]*)?@", re.IGNORECASE)
_API_KEY = re.compile(r"\b(?:sk|gsk|xai|pk|rk)[-_][A-Za-z0-9_-]{16,}")
_SCHEMES = frozenset({"bearer", "basic", "digest", "token"})


def _named(match: re.Match[str]) -> str:
    value = match.group(3)
    if value.startswith(REDACTED) or value.lower() in _SCHEMES:
        return match.group(0)  # already redacted, or a credential scheme redacted after it
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def redact(text: str) -> str:
    """``text`` with every secret-looking value replaced by ``[redacted]``.

    Covers sensitive query parameters (any name in ``QUERY_SECRETS``, or
    ending in ``_token``, ``-key``...), ``Authorization``-style credentials
    (``Bearer xyz``), ``name=value`` and ``"name": "value"`` pairs whose name
    is secret-like, JWTs, ``user:password@`` in URLs and common API key shapes
    (``sk-...``, ``gsk_...``). The rest of the text is left as it was.
    """
    if not text:
        return text
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _QUERY_PARAM.sub(rf"\1={REDACTED}", text)
    text = _CREDENTIAL.sub(rf"\1\2{REDACTED}", text)
    text = _NAMED_SECRET.sub(_named, text)
    text = _JWT.sub(REDACTED, text)
    return _API_KEY.sub(REDACTED, text)


def _redact_arg(arg: object) -> object:
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    if isinstance(arg, str):
        return redact(arg)
    shown = str(arg)
    clean = redact(shown)
    return arg if clean == shown else clean


class RedactFilter(logging.Filter):
    """Redacts a record in place (see ``redact``): its arguments, message and traceback.

    Arguments are redacted one by one, so a record keeps its structure (uvicorn's
    access formatter needs its five arguments); if the message still held a
    secret after that, it is replaced by its redacted text. On a logger, every
    handler of the record sees the clean version.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record``; always keeps it."""
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, Mapping) and args:
            record.args = {k: _redact_arg(v) for k, v in args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it as such
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class PayloadDumpFilter(logging.Filter):
    """Drops the ``websockets`` library's DEBUG frame dumps (``"< %s"``/``"> %s"``).

    uvicorn hands its ``uvicorn.error`` logger to the library, so at
    ``--log-level debug`` every WebSocket frame would be logged with the start
    of its payload: transcripts and replies of WebSocket calls.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but a frame dump."""
        args = record.args
        return not (
            record.msg in ("< %s", "> %s")
            and isinstance(args, tuple)
            and len(args) == 1
            and type(args[0]).__name__ == "Frame"
        )


class ContextFilter(logging.Filter):
    """Stamps ``request_id`` and ``call_id`` from the context on each record (None if unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the ids; always keeps the record."""
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        if not hasattr(record, "call_id"):
            call = current_call()
            record.call_id = call.call_id if call is not None else None
        return True


def _ids(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """The record's correlation ids (stamped by ``ContextFilter``, else from the context)."""
    if hasattr(record, "request_id"):
        request_id = cast(str | None, record.request_id)
    else:
        request_id = current_request_id()
    if hasattr(record, "call_id"):
        call_id = cast(str | None, record.call_id)
    else:
        call = current_call()
        call_id = call.call_id if call is not None else None
    return request_id, call_id


def _access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The fields of a uvicorn access-log record (client, method, path, version, status)."""
    args = record.args
    if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return None
    client, method, path, version, status = args
    return {
        "client": str(client),
        "method": str(method),
        "path": redact(str(path)),
        "version": str(version),
        "status": status if isinstance(status, int) else str(status),
    }


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [req=... call=...]: message``, redacted.

    ``use_colors`` is accepted (and ignored) for uvicorn, which sets it on the
    formatters named ``default`` and ``access`` when asked to.
    """

    def __init__(self, use_colors: bool | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(parley_ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one redacted text line (plus its traceback, if any)."""
        request_id, call_id = _ids(record)
        ids = [f"req={request_id}"] if request_id else []
        if call_id:
            ids.append(f"call={call_id}")
        record.parley_ids = f" [{' '.join(ids)}]" if ids else ""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``pid``, ``request_id``/``call_id`` when set, ``http`` for access
    lines, ``exc``/``stack`` when present; every text redacted."""

    def __init__(self, use_colors: bool | None = None) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        request_id, call_id = _ids(record)
        if request_id:
            out["request_id"] = request_id
        if call_id:
            out["call_id"] = call_id
        access = _access_fields(record)
        if access is not None:
            out["http"] = access
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class LogConfigError(ValueError):
    """An unknown log level or format."""


def log_format_from_env(env: Mapping[str, str] | None = None) -> LogFormat:
    """``PARLEY_LOG_FORMAT`` (``text`` when unset); raises ``LogConfigError`` if unknown."""
    value = (os.environ if env is None else env).get(LOG_FORMAT_ENV, "text").strip().lower()
    return _checked_format(value or "text")


def _checked_format(fmt: str) -> LogFormat:
    if fmt not in LOG_FORMATS:
        raise LogConfigError(f"{LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}")
    return fmt


def log_config(level: str = "info", fmt: str | None = None) -> dict[str, Any]:
    """The ``dictConfig`` dict of the server's logging (see the module docstring).

    ``level`` applies to the root logger and uvicorn's; ``fmt`` is ``text`` or
    ``json`` (None: ``PARLEY_LOG_FORMAT``, default ``text``). Raises
    ``LogConfigError`` for an unknown level or format.
    """
    name = level.strip().lower()
    if name not in LOG_LEVELS:
        raise LogConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    chosen = log_format_from_env() if fmt is None else _checked_format(fmt.strip().lower())
    numeric: int | str = 5 if name == "trace" else name.upper()  # uvicorn's TRACE is 5
    formatter = f"{__name__}.{'JsonFormatter' if chosen == 'json' else 'TextFormatter'}"
    safe = ["payloads", "redact"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": f"{__name__}.ContextFilter"},
            "redact": {"()": f"{__name__}.RedactFilter"},
            "payloads": {"()": f"{__name__}.PayloadDumpFilter"},
        },
        # named as uvicorn's own, which it may update (use_colors)
        "formatters": {"default": {"()": formatter}, "access": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context", *safe],
            },
        },
        "loggers": {
            # uvicorn's records propagate to the root's one handler, cleaned at the source
            "uvicorn": {"handlers": [], "level": numeric, "propagate": True, "filters": safe},
            "uvicorn.error": {"level": numeric, "propagate": True, "filters": safe},
            "uvicorn.access": {
                "handlers": [],
                "level": numeric,
                "propagate": True,
                "filters": safe,
            },
            # at --log-level trace: every ASGI scope, with its headers and query string
            "uvicorn.asgi": {"level": numeric, "propagate": True, "filters": safe},
            # the embedded store's driver logs statements with their parameters at DEBUG
            "aiosqlite": {"level": "INFO"},
        },
        "root": {"handlers": ["default"], "level": numeric},
    }


def configure_logging(level: str = "info", fmt: str | None = None) -> dict[str, Any]:
    """Apply ``log_config(level, fmt)`` now and return it (for ``uvicorn.run(log_config=)``)."""
    logging.addLevelName(5, "TRACE")
    config = log_config(level, fmt)
    logging.config.dictConfig(config)
    return config
