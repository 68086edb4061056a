"""SDP offer/answer for a phone call's audio (RFC 4566, RFC 3264, RFC 3551).

``parse_sdp`` reads a caller's offer into a ``SessionDescription``: the
connection address (media level over session level), the first usable
``m=audio`` line (its port, payload types, ``a=rtpmap``/``a=fmtp``,
``a=ptime``) and its direction. ``negotiate`` picks the audio codec (G.722
when offered, else PCMU, else PCMA) and ``telephone-event``; ``build_answer``
writes the answer. Anything the call cannot use raises
``SdpNegotiationError``, which the SIP layer answers with 488.

Hold (RFC 3264 section 8.4): a caller holds us with ``a=sendonly`` (we must
not send; we answer ``recvonly``) or ``a=inactive`` (nobody sends). The
RFC 2543 form, ``c=0.0.0.0``, means "do not send to me": it turns the
offered ``sendrecv`` into ``sendonly`` and ``recvonly`` into ``inactive``.
``Negotiated.direction`` is that effective direction, so ``mirror`` of it
is always the right answer direction.

The parser is strict about what it uses and lenient about the rest: lines
it does not need are skipped, but a missing or malformed ``v=``, ``o=``,
``c=`` or ``m=`` is an error with a reason, never a crash. Connection
addresses must be IP literals: no DNS is resolved on the media path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, cast

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
"""An SDP media direction attribute (RFC 3264 section 5.1)."""

DIRECTIONS: Final[frozenset[str]] = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

SUPPORTED_CODECS: Final = ("G722", "PCMU", "PCMA")
"""Audio encodings this server speaks, by SDP name."""

MAX_SDP_BYTES: Final = 16 * 1024
"""Largest SDP body accepted (a phone offer is a few hundred bytes)."""

ANSWER_PTIME_MS: Final = 20
"""Packet duration we send and ask for."""

DTMF_EVENTS: Final = "0-15"
"""Telephone-events we understand (digits 0-9, *, #, A-D)."""

_STATIC_PAYLOADS: Final[dict[int, tuple[str, int]]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    13: ("CN", 8000),
    18: ("G729", 8000),
}
"""RFC 3551 static audio payload types (used when an offer has no ``a=rtpmap``)."""

_AUDIO_RATES: Final[dict[str, tuple[int, int]]] = {
    "G722": (16_000, 8000),
    "PCMU": (8000, 8000),
    "PCMA": (8000, 8000),
}
"""Audio sample rate and RTP clock rate of each supported encoding."""

_RTP_PROTOS: Final = frozenset({"RTP/AVP", "RTP/AVPF"})
_MIRROR: Final[dict[str, Direction]] = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_ALLOWED_ANSWERS: Final[dict[str, frozenset[str]]] = {
    "sendrecv": DIRECTIONS,
    "sendonly": frozenset({"recvonly", "inactive"}),
    "recvonly": frozenset({"sendonly", "inactive"}),
    "inactive": frozenset({"inactive"}),
}
_HOLD_ADDRESSES: Final = frozenset({"0.0.0.0"})


class SdpNegotiationError(ValueError):
    """An offer that cannot be parsed or has nothing we can use (the SIP layer answers 488).

    The message says why, and never contains more of the offer than a short excerpt.
    """


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One payload type of an ``m=audio`` line with its encoding."""

    payload_type: int
    encoding: str
    """Encoding name as offered (compare case-insensitively)."""
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` line."""

    username: str
    session_id: int
    version: int
    address: str


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """The parts of an SDP offer that a phone call's audio needs."""

    origin: Origin
    connection_address: str
    """Effective ``c=`` address of the audio stream (media level, else session level)."""
    port: int
    """RTP port of the first ``m=audio`` line with a non-zero port."""
    proto: str
    formats: tuple[RtpMap, ...]
    """Offered payload types in the offer's order of preference."""
    direction: Direction
    """Direction attribute as written (media level, else session level, else sendrecv)."""
    ptime: int | None = None
    """``a=ptime`` in milliseconds, when offered."""

    @property
    def hold_address(self) -> bool:
        """Whether ``c=0.0.0.0`` says "do not send to me" (RFC 2543 hold)."""
        return self.connection_address in _HOLD_ADDRESSES

    @property
    def effective_direction(self) -> Direction:
        """The offer's direction with a ``c=0.0.0.0`` hold folded in."""
        if not self.hold_address:
            return self.direction
        if self.direction == "sendrecv":
            return "sendonly"
        if self.direction == "recvonly":
            return "inactive"
        return self.direction

    def format(self, payload_type: int) -> RtpMap | None:
        """The offered format with this payload type."""
        return next((f for f in self.formats if f.payload_type == payload_type), None)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of an offer: what both sides send and where."""

    codec: str
    """``G722``, ``PCMU`` or ``PCMA``."""
    payload_type: int
    sample_rate: int
    """Audio rate of the codec's PCM: 16000 for G.722, 8000 for G.711."""
    clock_rate: int
    """RTP timestamp rate (8000 for all three, RFC 3551)."""
    remote_address: str
    remote_port: int
    direction: Direction
    """The offer's effective direction (``c=0.0.0.0`` folded in); answer with ``mirror``."""
    telephone_event_pt: int | None = None
    telephone_event_rate: int = 8000
    remote_ptime: int | None = None
    proto: str = "RTP/AVP"
    encoding: str = field(default="", repr=False)
    """The encoding name exactly as offered (echoed in the answer's ``a=rtpmap``)."""

    @property
    def on_hold(self) -> bool:
        """Whether the caller holds us (we must not send)."""
        return self.direction in ("sendonly", "inactive")

    @property
    def dtmf_payload_type(self) -> int | None:
        """The telephone-event payload type, as ``RtpSession.open`` takes it (None: no DTMF)."""
        return self.telephone_event_pt

    @property
    def answer_direction(self) -> Direction:
        """Our direction in the answer: the mirror of the offer's."""
        return mirror(self.direction)


def mirror(direction: Direction) -> Direction:
    """The answer direction for an offer direction (sendonly <-> recvonly)."""
    return _MIRROR[direction]


def parse_sdp(text: str | bytes) -> SessionDescription:
    """Parse an offer; raise ``SdpNegotiationError`` with a reason when it is malformed."""
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_SDP_BYTES:
            raise SdpNegotiationError(f"SDP larger than {MAX_SDP_BYTES} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpNegotiationError("SDP is not UTF-8 text") from exc
    if not isinstance(text, str):
        raise SdpNegotiationError("SDP must be text")
    if len(text) > MAX_SDP_BYTES:
        raise SdpNegotiationError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpNegotiationError("SDP must start with v=0")

    origin: Origin | None = None
    session_conn: str | None = None
    session_dir: Direction | None = None
    medias: list[_Media] = []
    for number, line in enumerate(lines, start=1):
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpNegotiationError(f"SDP line {number} is not of the form x=value")
        kind, value = line[0], line[2:].strip()
        media = medias[-1] if medias else None
        if kind == "o":
            origin = _parse_origin(value)
        elif kind == "c":
            address = _parse_connection(value)
            if media is None:
                session_conn = address
            else:
                media.connection = address
        elif kind == "m":
            medias.append(_parse_media(value))
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if media is None:
                    session_dir = cast(Direction, name)
                else:
                    media.direction = cast(Direction, name)
            elif media is not None:
                media.attribute(name, arg)
    if origin is None:
        raise SdpNegotiationError("SDP has no o= line")
    active = [m for m in medias if m.media == "audio" and m.port]
    if not active:
        raise SdpNegotiationError("SDP offers no active m=audio stream")
    audio = next((m for m in active if m.used), None)
    if audio is None:
        raise SdpNegotiationError(
            f"audio transport {active[0].proto!r} is not plain RTP/AVP (no SRTP, no ICE)"
        )
    connection = audio.connection or session_conn
    if connection is None:
        raise SdpNegotiationError("SDP has no c= line for the audio stream")
    formats = tuple(audio.format(pt) for pt in audio.payload_types)
    return SessionDescription(
        origin=origin,
        connection_address=connection,
        port=audio.port,
        proto=audio.proto,
        formats=formats,
        direction=audio.direction or session_dir or "sendrecv",
        ptime=audio.ptime,
    )


def negotiate(
    offer: SessionDescription | str | bytes, *, prefer: Sequence[str] = SUPPORTED_CODECS
) -> Negotiated:
    """Choose the audio codec and telephone-event of an offer.

    The first encoding of ``prefer`` that the offer has wins (G.722 first by
    default: 16 kHz audio recognises better); the offer's payload type and
    clock rate are kept. ``telephone-event/8000`` is added when offered.
    Raises ``SdpNegotiationError`` when nothing matches.
    """
    unknown = [name for name in prefer if name.upper() not in _AUDIO_RATES]
    if unknown:
        raise ValueError(f"unsupported codecs in prefer: {unknown}")
    if not isinstance(offer, SessionDescription):
        offer = parse_sdp(offer)
    chosen: RtpMap | None = None
    for name in prefer:
        chosen = next((f for f in offer.formats if _usable(f, name.upper())), None)
        if chosen is not None:
            break
    if chosen is None:
        offered = ", ".join(f"{f.encoding}/{f.clock_rate}" for f in offer.formats) or "none"
        raise SdpNegotiationError(
            f"no common audio codec: we speak {'/'.join(prefer)}, the offer has {offered}"
        )
    codec = chosen.encoding.upper()
    sample_rate, _ = _AUDIO_RATES[codec]
    event = next(
        (
            f
            for f in offer.formats
            if f.encoding.lower() == "telephone-event" and f.clock_rate == 8000
        ),
        None,
    )
    return Negotiated(
        codec=codec,
        payload_type=chosen.payload_type,
        sample_rate=sample_rate,
        clock_rate=chosen.clock_rate,
        remote_address=offer.connection_address,
        remote_port=offer.port,
        direction=offer.effective_direction,
        telephone_event_pt=event.payload_type if event else None,
        telephone_event_rate=event.clock_rate if event else 8000,
        remote_ptime=offer.ptime,
        proto=offer.proto,
        encoding=chosen.encoding,
    )


def build_answer(
    negotiated: Negotiated,
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    direction: Direction | None = None,
) -> str:
    """Our SDP answer: the chosen payload types only, ``ptime:20`` and a direction.

    ``direction`` defaults to the mirror of the offer's; one the offer does
    not allow (we cannot send to a caller who only sends) raises ``ValueError``.
    ``version`` is the ``o=`` version: the caller passes one more than the
    last answer's on every re-INVITE (RFC 3264 section 8).
    """
    chosen = direction or negotiated.answer_direction
    if chosen not in _ALLOWED_ANSWERS[negotiated.direction]:
        raise ValueError(f"cannot answer {chosen} to an offer that is {negotiated.direction}")
    try:
        family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    except ValueError as exc:
        raise ValueError(f"answer address must be an IP literal, got {address!r}") from exc
    if not 0 < port < 65536:
        raise ValueError(f"answer port out of range: {port}")
    if session_id < 0 or version < 0:
        raise ValueError("o= session id and version must not be negative")
    encoding = negotiated.encoding or negotiated.codec
    pts = [negotiated.payload_type]
    if negotiated.telephone_event_pt is not None:
        pts.append(negotiated.telephone_event_pt)
    lines = [
        "v=0",
        f"o=parley {session_id} {version} IN {family} {address}",
        "s=parley",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} {negotiated.proto} {' '.join(map(str, pts))}",
        f"a=rtpmap:{negotiated.payload_type} {encoding}/{negotiated.clock_rate}",
    ]
    if negotiated.telephone_event_pt is not None:
        lines += [
            f"a=rtpmap:{negotiated.telephone_event_pt} telephone-event/"
            f"{negotiated.telephone_event_rate}",
            f"a=fmtp:{negotiated.telephone_event_pt} {DTMF_EVENTS}",
        ]
    lines += [f"a=ptime:{ANSWER_PTIME_MS}", f"a={chosen}"]
    return "\r\n".join(lines) + "\r\n"


# ------------------------------------------------------------------ internals


@dataclass(slots=True)
class _Media:
    media: str
    port: int
    proto: str
    payload_types: list[int]
    connection: str | None = None
    direction: Direction | None = None
    ptime: int | None = None
    rtpmaps: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    fmtps: dict[int, str] = field(default_factory=dict)

    @property
    def used(self) -> bool:
        """Whether this is a plain-RTP audio stream (the only kind whose attributes matter)."""
        return self.media == "audio" and self.proto in _RTP_PROTOS

    def attribute(self, name: str, arg: str) -> None:
        if not self.used:
            return  # lenient about streams we do not use
        if name == "rtpmap":
            pt, _, spec = arg.partition(" ")
            parts = spec.strip().split("/")
            if len(parts) not in (2, 3) or not parts[0]:
                raise SdpNegotiationError(f"malformed a=rtpmap:{_excerpt(arg)}")
            rate = _int(parts[1], "a=rtpmap clock rate", 1, 1_000_000)
            channels = _int(parts[2], "a=rtpmap channels", 1, 8) if len(parts) == 3 else 1
            self.rtpmaps[_int(pt, "a=rtpmap payload type", 0, 127)] = (parts[0], rate, channels)
        elif name == "fmtp":
            pt, _, params = arg.partition(" ")
            self.fmtps[_int(pt, "a=fmtp payload type", 0, 127)] = params.strip()
        elif name == "ptime":
            self.ptime = _int(arg, "a=ptime", 1, 1000)

    def format(self, pt: int) -> RtpMap:
        if pt in self.rtpmaps:
            encoding, rate, channels = self.rtpmaps[pt]
        elif pt in _STATIC_PAYLOADS:
            encoding, rate = _STATIC_PAYLOADS[pt]
            channels = 1
        else:
            encoding, rate, channels = "", 0, 1  # dynamic type without rtpmap: unusable
        return RtpMap(pt, encoding, rate, channels, self.fmtps.get(pt))


def _usable(fmt: RtpMap, name: str) -> bool:
    if fmt.encoding.upper() != name or fmt.channels != 1:
        return False
    # RFC 3551: G.722's RTP clock is 8000; tolerate offers that write 16000
    return fmt.clock_rate == 8000 or (name == "G722" and fmt.clock_rate == 16_000)


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6 or parts[3] != "IN":
        raise SdpNegotiationError(f"malformed o= line: {_excerpt(value)}")
    return Origin(
        username=parts[0],
        session_id=_int(parts[1], "o= session id", 0, 2**64 - 1),
        version=_int(parts[2], "o= version", 0, 2**64 - 1),
        address=parts[5],
    )


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpNegotiationError(f"malformed c= line: {_excerpt(value)}")
    try:
        address = ipaddress.ip_address(parts[2])
    except ValueError as exc:
        raise SdpNegotiationError(
            f"c= address must be an IP literal, got {_excerpt(parts[2])}"
        ) from exc
    if (address.version == 6) != (parts[1] == "IP6"):
        raise SdpNegotiationError(f"c= address {address} does not match {parts[1]}")
    if address.is_multicast:
        raise SdpNegotiationError("multicast c= addresses are not supported")
    return str(address)


def _parse_media(value: str) -> _Media:
    parts = value.split()
    if len(parts) < 4:
        raise SdpNegotiationError(f"malformed m= line: {_excerpt(value)}")
    port_spec = parts[1].partition("/")[0]  # "port/count": only the first port is used
    port = _int(port_spec, "m= port", 0, 65535)
    media = _Media(parts[0], port, parts[2], [])
    if media.used:  # other streams' formats need not be RTP payload types
        media.payload_types = [_int(pt, "m= payload type", 0, 127) for pt in parts[3:]]
    return media


def _int(text: str, what: str, low: int, high: int) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise SdpNegotiationError(f"{what} is not a number: {_excerpt(text)}")
    number = int(text)
    if not low <= number <= high:
        raise SdpNegotiationError(f"{what} {number} out of range {low}..{high}")
    return number


def _excerpt(text: str, limit: int = 40) -> str:
    short = text if len(text) <= limit else text[:limit] + "..."
    return repr(short)
