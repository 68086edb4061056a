"""SIP message framing, strict parsing and building, over ``sipmessage``.

``sipmessage`` knows the grammar of SIP headers (URIs, addresses, Via, CSeq,
auth parameters); this module adds what a server facing the network needs
around it:

- **Strict limits.** A message larger than ``max_bytes``, with too many
  header fields, control characters, a non-UTF-8 header block, a duplicated
  single-valued header, or a missing or unparsable mandatory header
  (Via, From, To, Call-ID, CSeq) raises ``MalformedMessageError``. Every
  header ``sipmessage`` exposes through typed accessors that the server uses
  is parsed here, once, so later code never meets a ``ValueError``.
- **A reply for the malformed.** ``MalformedMessageError.reply_to`` carries
  the few headers of a broken *request* that could still be read (a parsable
  Via at least), so the server can answer 400; when nothing can be
  addressed (garbage, a response, an ACK) it is ``None`` and the message is
  dropped.
- **Content-Length.** Over UDP the body is cut at Content-Length and a body
  shorter than announced is a truncated datagram (400). Over TCP,
  ``StreamFramer`` splits the byte stream by Content-Length (RFC 3261 18.3)
  with a bounded buffer, and recognises RFC 5626 CRLF keep-alives.
- **Building.** ``make_response`` copies Via/From/To/Call-ID/CSeq from the
  request as RFC 3261 8.2.6.2 requires, adds the To-tag, and always writes
  Content-Length.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sipmessage import URI, Address, CSeq, MediaType, Request, Response, Via
from sipmessage.message import COMPACT_FORMS

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"
"""Prefix of RFC 3261 branch parameters (section 8.1.1.7)."""
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
"""Most header fields accepted in one message (after unfolding)."""
MAX_CSEQ = 2**31 - 1
MAX_SALVAGED_HEADER = 1024
"""Longest header value copied from a malformed request into its 400."""
OVERSIZE_CODE = 400
"""Answer to an oversized request (the issue asks for 400; RFC 3261 also has 513)."""

REASONS: Mapping[int, str] = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}
_CLASS_REASONS = {1: "Trying", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error"}

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CALL_ID = re.compile(r"^[\x21-\x7e]+$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*$")
_SINGLE_VALUED = ("from", "to", "call-id", "cseq", "content-length", "max-forwards", "content-type")
_CORE_HEADERS = frozenset(("via", "from", "to", "call-id", "cseq", "content-length"))


def reason_phrase(code: int) -> str:
    """The standard reason phrase of a status code (a generic one for unlisted codes)."""
    return REASONS.get(code) or _CLASS_REASONS.get(code // 100, "Global Failure")


def random_token(nbytes: int = 8) -> str:
    """A random hex token for tags, branches and Call-IDs."""
    return secrets.token_hex(nbytes)


def new_branch() -> str:
    """A fresh RFC 3261 branch parameter (magic cookie + 128 random bits)."""
    return MAGIC_COOKIE + random_token(16)


def call_ref(call_id: str) -> str:
    """The Call-ID prefix that log lines carry (enough to correlate, short)."""
    return call_id[:8]


class SipError(Exception):
    """Base class of the errors raised by ``media.sip``."""


class SipRejection(SipError):  # noqa: N818 (the name is the public API)
    """Raised by a call handler (or a re-INVITE listener) to refuse with a final response.

    ``code`` is a 3xx-6xx status; ``headers`` (for example ``Retry-After``)
    are added to the response. Header names must be tokens and values must be
    single-line; the core headers that frame the transaction (Via, From, To,
    Call-ID, CSeq, Content-Length) cannot be set this way.
    """

    def __init__(self, code: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        if not 300 <= code <= 699:
            raise ValueError(f"a rejection needs a final non-2xx status code, got {code}")
        if not reason or not _HEADER_VALUE.match(reason):
            raise ValueError("the reason phrase must be a non-empty single line")
        checked = dict(headers or {})
        for name, value in checked.items():
            if not _TOKEN.match(name) or name.lower() in _CORE_HEADERS:
                raise ValueError(f"header {name!r} cannot be set on a rejection")
            if not _HEADER_VALUE.match(value):
                raise ValueError(f"header {name!r} must be a single line")
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.headers: Mapping[str, str] = checked


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What could be read of a malformed request: enough to address a 400."""

    vias: tuple[Via, ...]
    """The Via headers, parsed (the first one addresses the reply)."""
    via_values: tuple[str, ...]
    """The same, as received (copied into the reply unchanged)."""
    from_value: str | None = None
    to_value: str | None = None
    call_id: str | None = None
    cseq: str | None = None


class MalformedMessageError(SipError):
    """A message that cannot be accepted.

    ``reply_to`` is set when the message was a request (not an ACK) whose
    Via could be read: the server answers it with ``code`` (400). ``oversized``
    tells a message over the size limit from a broken one (for statistics).
    """

    def __init__(
        self,
        reason: str,
        *,
        reply_to: ReplyContext | None = None,
        oversized: bool = False,
        code: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_to = reply_to
        self.oversized = oversized
        self.code = code or (OVERSIZE_CODE if oversized else 400)


@dataclass(slots=True)
class SipRequest:
    """A request that passed strict parsing, with its mandatory headers already typed.

    ``message`` is the ``sipmessage.Request``; ``vias`` is authoritative for
    the Via header (``stamp_via`` rewrites both).
    """

    message: Request
    method: str
    uri: URI
    call_id: str
    cseq: CSeq
    from_address: Address
    to_address: Address
    vias: list[Via]
    max_forwards: int | None
    content_type: str | None
    """The body's MIME type, lowercased, without parameters (None when absent)."""
    via_values: list[str] = field(default_factory=list)
    """The Via header values as received (``stamp_via`` edits the first): responses copy
    them byte for byte, because ``sipmessage`` would re-encode their parameters."""

    @property
    def body(self) -> bytes:
        """The request body (exactly Content-Length bytes)."""
        return self.message.body

    @property
    def from_tag(self) -> str:
        """The From tag ('' for an RFC 2543 peer that sends none)."""
        return self.from_address.parameters.get("tag") or ""

    @property
    def to_tag(self) -> str:
        """The To tag ('' outside a dialog)."""
        return self.to_address.parameters.get("tag") or ""

    @property
    def top_via(self) -> Via:
        """The topmost Via: the previous hop, where responses go."""
        return self.vias[0]

    @property
    def branch(self) -> str:
        """The topmost Via's branch parameter ('' when absent)."""
        return self.top_via.parameters.get("branch") or ""

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive, compact forms expanded)."""
        return self.message.headers.get(name)

    def stamp_via(self, source: tuple[str, int]) -> None:
        """Record where the request really came from (RFC 3261 18.2.1, RFC 3581).

        Adds ``received`` when the sent-by host is not the source address
        (always when ``rport`` is present), and fills in ``rport``.
        """
        top, values = stamp_via(self.vias[0], self.via_values, source)
        self.vias[0] = top
        self.via_values = values
        self.message.headers.setlist("Via", list(values))


_VIA_STAMPS = re.compile(
    r";[ \t]*(?:received|rport)[ \t]*(?:=[ \t]*[^;, \t]*)?(?=[ \t]*(?:[;,]|$))", re.IGNORECASE
)


def _split_first(value: str) -> tuple[str, str]:
    """Split a header value at its first comma outside quotes: (first, rest)."""
    quoted = False
    for i, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            return value[:i], value[i:]
    return value, ""


def stamp_via(top: Via, values: list[str], source: tuple[str, int]) -> tuple[Via, list[str]]:
    """The top Via with ``received``/``rport`` set for ``source``, parsed and as text.

    The text is edited in place (other parameters keep their exact spelling).
    """
    params = top.parameters
    if "rport" in params:
        params = params.replace(received=source[0], rport=str(source[1]))
        stamps = f";received={source[0]};rport={source[1]}"
    elif top.host.strip("[]") != source[0]:
        params = params.replace(received=source[0])
        stamps = f";received={source[0]}"
    else:
        return top, values
    first, rest = _split_first(values[0])
    first = _VIA_STAMPS.sub("", first).rstrip() + stamps
    return Via(top.transport, top.host, top.port, params), [first + rest, *values[1:]]


@dataclass(slots=True)
class SipResponse:
    """A response that passed strict parsing (responses arrive for our BYE/REFER)."""

    message: Response
    code: int
    call_id: str
    cseq: CSeq
    vias: list[Via]

    @property
    def branch(self) -> str:
        """The topmost Via's branch parameter ('' when absent)."""
        return self.vias[0].parameters.get("branch") or ""


def _header_lines(head: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a header block into its start line and unfolded (name, value) fields."""
    lines = head.split("\r\n")
    if any("\n" in line or "\r" in line for line in lines):
        raise MalformedMessageError("bare CR or LF in the header block")
    start = lines[0]
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            raise MalformedMessageError("empty header line")
        if line[0] in " \t":
            if not fields:
                raise MalformedMessageError("continuation line without a header")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not _TOKEN.match(name):
            raise MalformedMessageError("invalid header field")
        fields.append((COMPACT_FORMS.get(name.lower(), name), value.strip()))
        if len(fields) > MAX_HEADER_FIELDS:
            raise MalformedMessageError("too many header fields")
    return start, fields


def _content_length(values: list[str], max_bytes: int) -> int | None:
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit() or not values[0].isascii():
        raise MalformedMessageError("invalid Content-Length")
    length = int(values[0])
    if length > max_bytes:
        raise MalformedMessageError("Content-Length over the size limit", oversized=True)
    return length


def parse_message(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, stream: bool = False
) -> SipRequest | SipResponse:
    """Parse one SIP message strictly.

    ``stream`` is True for a message cut from a TCP stream by ``StreamFramer``
    (its body is exactly Content-Length long). Raises ``MalformedMessageError``
    (with ``reply_to`` when a 400 can be addressed); never anything else.
    """
    if len(data) > max_bytes:
        raise MalformedMessageError(
            "message over the size limit", reply_to=salvage(data[:max_bytes]), oversized=True
        )
    try:
        return _parse(data, max_bytes=max_bytes, stream=stream)
    except MalformedMessageError as exc:
        if exc.reply_to is None:
            exc.reply_to = salvage(data)
        raise
    except (ValueError, KeyError, IndexError) as exc:
        # sipmessage's grammar errors: one of the typed headers does not parse
        raise MalformedMessageError(f"unparsable header ({exc})", reply_to=salvage(data)) from None


def _parse(data: bytes, *, max_bytes: int, stream: bool) -> SipRequest | SipResponse:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise MalformedMessageError("no end of headers (truncated?)")
    try:
        head = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessageError("header block is not UTF-8") from None
    if "\x00" in head or re.search(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", head):
        raise MalformedMessageError("control character in the header block")
    start, fields = _header_lines(head)
    body = data[end + 4 :]

    request_line = start.split(" ")
    message: Request | Response
    if len(request_line) == 3 and request_line[2] == SIP_VERSION:
        method, raw_uri = request_line[0], request_line[1]
        if not _TOKEN.match(method):
            raise MalformedMessageError("invalid method")
        try:
            uri = URI.parse(raw_uri)
        except ValueError:
            scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", raw_uri)
            if scheme and scheme.group(1).lower() not in ("sip", "sips", "tel"):
                raise MalformedMessageError("unsupported URI scheme", code=416) from None
            raise
        message = Request(method, uri)
    elif start.startswith(SIP_VERSION + " "):
        status = start[len(SIP_VERSION) + 1 :]
        code_text, _, phrase = status.partition(" ")
        if len(code_text) != 3 or not code_text.isdigit() or not 100 <= int(code_text) <= 699:
            raise MalformedMessageError("invalid status code")
        message = Response(int(code_text), phrase)
    else:
        raise MalformedMessageError("neither a request nor a response line")
    for name, value in fields:
        message.headers.add(name, value)

    headers = message.headers
    for name in _SINGLE_VALUED:
        if len(headers.getlist(name)) > 1:
            raise MalformedMessageError(f"duplicated {name} header")
    length = _content_length(headers.getlist("Content-Length"), max_bytes)
    if length is not None:
        if len(body) < length:
            raise MalformedMessageError("body shorter than Content-Length (truncated)")
        if stream and len(body) != length:
            raise MalformedMessageError("stream framing does not match Content-Length")
        body = body[:length]
    message.body = body

    call_id = headers.get("Call-ID")
    if not call_id or not _CALL_ID.match(call_id):
        raise MalformedMessageError("missing or invalid Call-ID")
    if headers.get("CSeq") is None or not headers.getlist("Via"):
        raise MalformedMessageError("missing CSeq or Via")
    cseq = message.cseq
    if cseq.sequence > MAX_CSEQ:
        raise MalformedMessageError("CSeq out of range")
    vias = message.via
    via_values = list(headers.getlist("Via"))
    if not vias:
        raise MalformedMessageError("missing Via")
    if headers.get("From") is None or headers.get("To") is None:
        raise MalformedMessageError("missing From or To")
    from_address, to_address = message.from_address, message.to_address

    if isinstance(message, Response):
        return SipResponse(message, message.code, call_id, cseq, vias)

    if cseq.method != message.method:
        raise MalformedMessageError("CSeq method does not match the request")
    max_forwards: int | None = None
    if (raw := headers.get("Max-Forwards")) is not None:
        if not raw.isdigit() or not raw.isascii() or int(raw) > 255:
            raise MalformedMessageError("invalid Max-Forwards")
        max_forwards = int(raw)
    content_type: str | None = None
    if headers.get("Content-Type") is not None:
        media_type = message.content_type
        assert media_type is not None
        content_type = media_type.mime_type.lower()
    return SipRequest(
        message=message,
        method=message.method,
        uri=message.uri,
        call_id=call_id,
        cseq=cseq,
        from_address=from_address,
        to_address=to_address,
        vias=vias,
        max_forwards=max_forwards,
        content_type=content_type,
        via_values=via_values,
    )


_REQUEST_START = re.compile(r"^([A-Za-z0-9\-.!%*_+`'~]+) \S+ SIP/2\.0$")


def salvage(data: bytes) -> ReplyContext | None:
    """Read what can be read of a malformed request to address a 400, or None.

    Only complete header lines (followed by a line break) are used, so a value
    cut at a size limit is never mistaken for a whole one. Nothing is salvaged
    from responses, ACKs (which are never answered) or messages without a
    parsable Via.
    """
    text = data.decode("latin-1")
    head, complete, _ = text.partition("\r\n\r\n")
    lines = re.split(r"\r?\n", head)
    if not complete:  # no blank line: the last line may be cut short
        lines = lines[:-1]
    if not lines:
        return None
    start = _REQUEST_START.match(lines[0])
    if start is None or start.group(1) == "ACK":
        return None
    vias: list[Via] = []
    via_values: list[str] = []
    found: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        value = value.strip()
        if not sep or len(value) > MAX_SALVAGED_HEADER or _CONTROL.search(value):
            continue
        key = COMPACT_FORMS.get(name.strip().lower(), name.strip()).lower()
        try:
            if key == "via":
                vias.extend(Via.parse_many(value))
                via_values.append(value)
            elif key in ("from", "to") and key not in found:
                Address.parse(value)
                found[key] = value
            elif key == "cseq" and key not in found:
                CSeq.parse(value)
                found[key] = value
            elif key == "call-id" and key not in found and _CALL_ID.match(value):
                found[key] = value
        except ValueError:
            continue
    if not vias:
        return None
    return ReplyContext(
        vias=tuple(vias),
        via_values=tuple(via_values),
        from_value=found.get("from"),
        to_value=found.get("to"),
        call_id=found.get("call-id"),
        cseq=found.get("cseq"),
    )


def _finish(
    response: Response,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    content_type: str | None,
    server: str | None,
) -> Response:
    for name, value in headers:
        response.headers.add(name, value)
    if server:
        response.headers.set("Server", server)
    if body:
        response.headers.set("Content-Type", content_type or "application/sdp")
    response.body = body
    response.headers.set("Content-Length", str(len(body)))
    return response


def make_response(
    request: SipRequest,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    server: str | None = None,
) -> Response:
    """A response to ``request`` (RFC 3261 8.2.6).

    Via, From, Call-ID and CSeq are copied; To is copied with ``to_tag`` added
    when it has none (never on 100 Trying). Record-Route is copied into
    responses that can establish a dialog (1xx above 100 and 2xx to INVITE).
    """
    response = Response(code, reason or reason_phrase(code))
    source = request.message.headers
    response.headers.setlist("Via", list(request.via_values))
    response.headers.set("From", source["From"])
    to_value = source["To"]
    if to_tag and code != 100 and not request.to_tag:
        to_value = f"{to_value};tag={to_tag}"
    response.headers.set("To", to_value)
    response.headers.set("Call-ID", request.call_id)
    response.headers.set("CSeq", str(request.cseq))
    if code == 100 and (timestamp := source.get("Timestamp")) is not None:
        response.headers.set("Timestamp", timestamp)
    if request.method == "INVITE" and 100 < code < 300:
        record_route = source.getlist("Record-Route")
        if record_route:
            response.headers.setlist("Record-Route", list(record_route))
    return _finish(response, headers, body, content_type, server)


def make_stateless_response(
    context: ReplyContext,
    code: int,
    reason: str | None = None,
    *,
    source: tuple[str, int] | None = None,
    server: str | None = None,
) -> Response:
    """A response built from what was salvaged of a malformed request.

    With ``source``, the top Via gets ``received``/``rport`` like a parsed request's.
    """
    response = Response(code, reason or reason_phrase(code))
    values = list(context.via_values)
    if source is not None:
        _, values = stamp_via(context.vias[0], values, source)
    response.headers.setlist("Via", values)
    if context.from_value is not None:
        response.headers.set("From", context.from_value)
    if context.to_value is not None:
        to_value = context.to_value
        if ";tag=" not in to_value.replace(" ", ""):
            to_value = f"{to_value};tag={random_token()}"
        response.headers.set("To", to_value)
    if context.call_id is not None:
        response.headers.set("Call-ID", context.call_id)
    if context.cseq is not None:
        response.headers.set("CSeq", context.cseq)
    return _finish(response, (), b"", None, server)


def make_request(
    method: str,
    uri: URI,
    *,
    via: Via,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    content_type: str | None = None,
    user_agent: str | None = None,
) -> Request:
    """A request with ``via`` first, then ``headers`` in order, then Content-Length."""
    request = Request(method, uri, body)
    request.headers.add("Via", str(via))
    for name, value in headers:
        request.headers.add(name, value)
    if user_agent:
        request.headers.set("User-Agent", user_agent)
    if body:
        request.headers.set("Content-Type", content_type or "application/sdp")
    request.headers.set("Content-Length", str(len(body)))
    return request


def response_address(via: Via, source: tuple[str, int]) -> tuple[str, int]:
    """Where a response to a request received over UDP goes (RFC 3261 18.2.2, RFC 3581).

    Always the request's source address (the ``received`` rule: ``stamp_via``
    sets it whenever sent-by differs), so a response is never reflected to a
    third party; the port is ``rport`` when the client asked for it, else the
    sent-by port, else 5060. ``maddr`` (multicast) is not supported.
    """
    if "rport" in via.parameters:
        return source
    return source[0], via.port or 5060


def media_type(value: str) -> str:
    """The lowercased MIME type of a Content-Type value ('' when unparsable)."""
    try:
        return MediaType.parse(value).mime_type.lower()
    except ValueError:
        return ""


class KeepAlive:
    """An RFC 5626 CRLFCRLF ping read from a stream (answer with a CRLF pong)."""

    __slots__ = ()


KEEPALIVE = KeepAlive()


class FramingError(MalformedMessageError):
    """A TCP stream that cannot be split into messages; the connection must close."""


@dataclass(slots=True)
class StreamFramer:
    """Splits a SIP byte stream into messages by Content-Length (RFC 3261 18.3).

    The buffer never holds more than one message of ``max_bytes`` plus the
    last chunk read: a header block or a Content-Length past the limit raises
    ``FramingError`` (with a ``reply_to`` when a 400 can be addressed). A
    missing Content-Length on a stream counts as 0. Empty lines between
    messages are skipped; a CRLFCRLF keep-alive yields ``KEEPALIVE``.
    """

    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    _buffer: bytearray = field(default_factory=bytearray)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        """Add bytes read from the stream; return the complete items they finish."""
        buffer = self._buffer
        buffer += data
        items: list[bytes | KeepAlive] = []
        while buffer:
            if buffer.startswith(b"\r\n"):
                if buffer.startswith(b"\r\n\r\n"):
                    items.append(KEEPALIVE)
                    del buffer[:4]
                    continue
                if len(buffer) < 4 and b"\r\n\r\n".startswith(bytes(buffer)):
                    break  # maybe the first half of a ping
                del buffer[:2]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_bytes:
                    raise FramingError(
                        "header block over the size limit",
                        reply_to=salvage(bytes(buffer[: self.max_bytes])),
                        oversized=True,
                    )
                break
            length = self._length(bytes(buffer[:end]))
            total = end + 4 + length
            if total > self.max_bytes:
                raise FramingError(
                    "message over the size limit",
                    reply_to=salvage(bytes(buffer[:end]) + b"\r\n"),
                    oversized=True,
                )
            if len(buffer) < total:
                break
            items.append(bytes(buffer[:total]))
            del buffer[:total]
        return items

    def _length(self, head: bytes) -> int:
        values = []
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() in (b"content-length", b"l"):
                values.append(value.strip().decode("latin-1"))
        try:
            return _content_length(values, self.max_bytes) or 0
        except MalformedMessageError as exc:
            raise FramingError(
                exc.reason, reply_to=salvage(head + b"\r\n"), oversized=exc.oversized
            ) from None
