"""Strict checks of a caller's WebRTC SDP offer, made before any call is created.

aiortc's SDP parser is lenient and fails with whatever the line it chokes on
raises (an ``AssertionError``, ``KeyError``, ``AttributeError``...), and an
offer it parses may still fail later: ``setRemoteDescription`` raises
``OperationError`` when no codec is in common, ``createAnswer`` a
``ValueError`` when a media section has no direction, and a missing
``a=setup`` or ``a=sctp-port`` breaks the connection in a background task.
``check_offer`` accepts exactly the offers our aiortc peer can answer and
rejects everything else with ``SdpError`` and one clear reason:

- text: at most ``MAX_SDP_BYTES`` of UTF-8 (``SdpTooLargeError`` past it), no
  control characters, ``v=0`` first, then ``o=``, ``s=`` and ``t=``; only the
  line types of RFC 8866 (a parser must refuse a type it does not know);
- media: exactly one ``m=audio`` section (a numeric port, a DTLS-SRTP profile
  such as ``UDP/TLS/RTP/SAVPF``, numeric payload types) that sends audio
  (``a=sendrecv`` or ``a=sendonly``) with ``a=rtcp-mux``, and at most one
  data channel section (``UDP/DTLS/SCTP webrtc-datachannel`` with
  ``a=sctp-port``); video and other media are refused (nothing would
  consume them);
- codecs: at least one codec aiortc answers (``ANSWERABLE_CODECS``: Opus
  48 kHz, G.722, PCMU, PCMA) on a payload type aiortc keeps in its answer;
- transport: in every section an ``a=mid``, ICE credentials
  (``a=ice-ufrag`` of 4-256 and ``a=ice-pwd`` of 22-256 ice-chars), a DTLS
  fingerprint with a hash aiortc verifies (``sha-256``, ``sha-384``,
  ``sha-512``) and well-formed hex of that hash's length, and
  ``a=setup:actpass|active|passive``; ``a=candidate`` lines with an IP or
  mDNS address (at most ``MAX_CANDIDATES``, ``MAX_MDNS_CANDIDATES`` of them
  ``.local``: each is resolved by multicast while the offer is answered);
- every attribute aiortc reads has the syntax aiortc expects, and the
  counts it loops over are bounded (codecs, SSRC lines).

Last, aiortc's own parser runs on the offer (inside a guard), so nothing
but ``SdpError`` can come out of ``check_offer``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from aiortc.codecs import CODECS
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.rtp import DYNAMIC_PAYLOAD_TYPES, FORBIDDEN_PAYLOAD_TYPES
from aiortc.sdp import FMTP_INT_PARAMETERS, SessionDescription

MAX_SDP_BYTES: Final = 64 * 1024
"""Largest offer accepted (UTF-8 bytes); a browser's audio offer is 2-6 KiB."""
MAX_CANDIDATES: Final = 32
"""ICE candidates accepted in one offer (a browser sends a handful per section)."""
MAX_MDNS_CANDIDATES: Final = 8
"""Of those, ``.local`` names: each costs a multicast query and up to 1 s of waiting."""
MAX_CODECS: Final = 64
"""``a=rtpmap`` lines per section (aiortc matches every ``a=fmtp``/``a=rtcp-fb`` against them)."""
MAX_SSRC_LINES: Final = 64
"""``a=ssrc`` lines per section (aiortc's lookup of each is linear)."""

AUDIO_PROFILES: Final = frozenset(
    {"UDP/TLS/RTP/SAVPF", "TCP/TLS/RTP/SAVPF", "RTP/SAVPF", "UDP/TLS/RTP/SAVP", "RTP/SAVP"}
)
"""Transport protocols of an audio section: RTP over DTLS-SRTP, as WebRTC uses."""
DATA_PROFILES: Final = frozenset({"UDP/DTLS/SCTP", "TCP/DTLS/SCTP"})
"""Data channel protocols (RFC 8841); the legacy ``DTLS/SCTP <port>`` form is also read."""
LEGACY_DATA_PROFILE: Final = "DTLS/SCTP"

FINGERPRINT_BYTES: Final = {
    "sha-1": 20,
    "sha-224": 28,
    "sha-256": 32,
    "sha-384": 48,
    "sha-512": 64,
    "md5": 16,
    "md2": 16,
}
"""Hash functions of the IANA registry RFC 8122 uses, and their digest sizes."""
VERIFIED_FINGERPRINTS: Final = frozenset(X509_DIGEST_ALGORITHMS)
"""The fingerprint hashes aiortc checks the caller's certificate with."""

ANSWERABLE_CODECS: Final = tuple(
    (codec.mimeType.split("/", 1)[1], codec.clockRate, codec.payloadType)
    for codec in CODECS["audio"]
)
"""``(name, clock rate, aiortc's payload type)`` of each audio codec our aiortc peer answers."""

SEND_DIRECTIONS: Final = ("sendrecv", "sendonly")
DIRECTIONS: Final = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
SETUP_ROLES: Final = frozenset({"actpass", "active", "passive"})
LINE_TYPES: Final = frozenset("vosiuepcbtrzkam")
"""The SDP line types (RFC 8866 section 5); any other type letter refuses the offer."""

_CONTROL = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f\x85\u2028\u2029]")
_LINE = re.compile(r"^([a-z])=(.*)$", re.DOTALL)
_ATTRIBUTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9\-_.]*)(?::(.*))?$", re.DOTALL)
_MEDIA = re.compile(r"^(\S+) (\S+) (\S+)((?: \S+)+)$")
_CONNECTION = re.compile(r"^IN (IP4|IP6) ([^ ]+)$")
_ICE_UFRAG = re.compile(r"^[A-Za-z0-9+/]{4,256}$")
_ICE_PWD = re.compile(r"^[A-Za-z0-9+/]{22,256}$")
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]{1,32}$")
_HEX_PAIRS = re.compile(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~]{1,64}$")
_UINT = re.compile(r"^[0-9]{1,10}$")
_RTPMAP = re.compile(r"^([0-9]{1,3}) ([^/ ]+)/([0-9]{1,6})(?:/([0-9]{1,2}))?$")
_FMTP = re.compile(r"^([0-9]{1,3}) (\S.*)$")
_RTCP_FB = re.compile(r"^(\*|[0-9]{1,3}) [^ ]+(?: .*)?$")
_EXTMAP = re.compile(r"^([0-9]{1,3})(?:/(?:sendrecv|sendonly|recvonly|inactive))? \S+$")
_RTCP = re.compile(r"^([0-9]{1,5})(?: (IN IP[46] [^ ]+))?$")
_SSRC = re.compile(r"^([0-9]{1,10}) [^:]+:.*$")
_SCTPMAP = re.compile(r"^[0-9]{1,5} \S.*$")
_MDNS = re.compile(r"^[a-zA-Z0-9-]{1,63}\.local$")
_CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})
_SHOWN = 40


class SdpError(ValueError):
    """An offer that is not a usable SDP audio offer: answered 400 ``bad_sdp``."""

    status: int = 400
    """The HTTP status the API answers with."""
    code: str = "bad_sdp"
    """The API's error code."""


class SdpTooLargeError(SdpError):
    """An offer over ``MAX_SDP_BYTES``: answered 413 ``sdp_too_large``."""

    status = 413
    code = "sdp_too_large"


@dataclass(frozen=True, slots=True)
class CheckedOffer:
    """What an accepted offer carries."""

    codecs: tuple[str, ...]
    """Its answerable audio codecs in the caller's order of preference (``opus/48000``)."""
    data_channel: bool
    """Whether it opens a data channel (the ``events`` channel)."""
    candidates: int
    """ICE candidates it carries (0: trickle or none)."""


@dataclass(slots=True)
class _Section:
    """One ``m=`` section, as read: its line number, m-line fields and attributes."""

    line: int
    kind: str
    port: str
    proto: str
    formats: list[str]
    attributes: list[tuple[int, str, str | None]] = field(default_factory=list)

    def values(self, name: str) -> list[str | None]:
        return [value for _, attr, value in self.attributes if attr == name]

    def has(self, name: str) -> bool:
        return any(attr == name for _, attr, _ in self.attributes)


def _show(text: str) -> str:
    """A caller's token, quoted and cut short, for an error message."""
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def sdp_size_error(size: int) -> SdpTooLargeError:
    """The error for an offer of ``size`` bytes (over ``MAX_SDP_BYTES``)."""
    return SdpTooLargeError(f"the SDP offer is {size} bytes; at most {MAX_SDP_BYTES} are accepted")


def decode_offer(raw: bytes) -> str:
    """An ``application/sdp`` body as text (``SdpError`` unless it is UTF-8 within the limit)."""
    if len(raw) > MAX_SDP_BYTES:
        raise sdp_size_error(len(raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError(f"the SDP is not UTF-8 text (byte {exc.start})") from None


def check_offer(sdp: str, kind: str = "offer") -> CheckedOffer:
    """Accept an offer our aiortc peer can answer, or raise ``SdpError`` saying why not.

    ``kind`` is the description's type (``{"type": ...}`` of a JSON offer).
    Never raises anything but ``SdpError`` (``SdpTooLargeError`` for size).
    """
    if kind != "offer":
        raise SdpError(f"expected an SDP offer, got type {_show(kind)}")
    try:
        size = len(sdp.encode("utf-8"))
    except UnicodeEncodeError:
        raise SdpError("the SDP is not valid Unicode text (lone surrogate)") from None
    if size > MAX_SDP_BYTES:
        raise sdp_size_error(size)
    if (bad := _CONTROL.search(sdp)) is not None:
        raise SdpError(f"the SDP contains a control character ({bad.group()!r})")
    session, sections = _read(sdp)
    for section in (session, *sections):
        _check_attributes(section)
    offer = _check_structure(session, sections)
    try:
        SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever its line raised
        raise SdpError(f"the offer does not parse ({type(exc).__name__})") from None
    return offer


# ------------------------------------------------------------------ lines


def _read(sdp: str) -> tuple[_Section, list[_Section]]:
    """Split the offer into its session part and its media sections (line syntax checked)."""
    lines = sdp.splitlines()  # how aiortc splits it
    while lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != "v=0":
        raise SdpError("the SDP must start with the line v=0")
    session = _Section(1, "session", "", "", [])
    sections: list[_Section] = []
    current = session
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        match = _LINE.match(line)
        if match is None:
            raise SdpError(f"line {number} is not of the form x=value: {_show(line)}")
        kind, value = match.groups()
        if kind not in LINE_TYPES:
            raise SdpError(f"line {number}: unknown SDP line type {kind!r}")
        if kind == "m":
            current = _media_line(number, value)
            sections.append(current)
        elif kind == "v":
            raise SdpError(f"line {number}: a second v= line")
        elif kind == "a":
            attribute = _ATTRIBUTE.match(value)
            if attribute is None:
                raise SdpError(f"line {number}: malformed attribute {_show(line)}")
            current.attributes.append((number, attribute.group(1), attribute.group(2)))
        elif kind == "c" and _CONNECTION.match(value) is None:
            raise SdpError(f"line {number}: c= must be 'IN IP4|IP6 <address>', got {_show(value)}")
        elif current is session:
            _session_line(number, kind, value)
        if current is session:
            seen.add(kind)
    for kind, name in (("o", "origin"), ("s", "session name"), ("t", "timing")):
        if kind not in seen:
            raise SdpError(f"the SDP has no {kind}= ({name}) line")
    return session, sections


def _session_line(number: int, kind: str, value: str) -> None:
    if kind == "o" and len(value.split(" ")) != 6:
        raise SdpError(f"line {number}: o= needs six fields, got {_show(value)}")
    if kind == "t" and re.match(r"^[0-9]{1,20} [0-9]{1,20}$", value) is None:
        raise SdpError(f"line {number}: t= must be two numbers, got {_show(value)}")


def _media_line(number: int, value: str) -> _Section:
    match = _MEDIA.match(value)
    if match is None:
        raise SdpError(f"line {number}: m= needs 'media port proto formats', got {_show(value)}")
    kind, port, proto, formats = match.groups()
    if not port.isascii() or not port.isdigit() or not 0 < int(port) <= 65535:
        raise SdpError(f"line {number}: m={kind} port must be a number 1-65535, got {_show(port)}")
    return _Section(number, kind, port, proto, formats.split())


# ------------------------------------------------------------- attributes


def _need(number: int, name: str, value: str | None, pattern: re.Pattern[str], form: str) -> str:
    if value is None or pattern.match(value) is None:
        got = "nothing" if value is None else _show(value)
        raise SdpError(f"line {number}: a={name} must be {form}, got {got}")
    return value


def _fingerprint(number: int, value: str | None) -> None:
    bits = (value or "").split()
    if len(bits) != 2:
        raise SdpError(f"line {number}: a=fingerprint must be '<hash> <hex>'")
    algorithm, digest = bits[0].lower(), bits[1]
    size = FINGERPRINT_BYTES.get(algorithm)
    if size is None:
        raise SdpError(f"line {number}: unknown fingerprint hash {_show(bits[0])}")
    if _HEX_PAIRS.match(digest) is None or len(digest) != size * 3 - 1:
        raise SdpError(
            f"line {number}: a {algorithm} fingerprint is {size} colon-separated hex bytes"
        )


def _candidate(number: int, value: str | None) -> None:
    bits = (value or "").split()
    if len(bits) < 8 or len(bits) % 2:
        raise SdpError(f"line {number}: a=candidate needs eight fields and name/value pairs")
    foundation, component, transport, priority, address, port, typ, ctype = bits[:8]
    problems = [
        (_ICE_CHARS.match(foundation) is None, "foundation"),
        (not _uint(component, 1, 256), "component"),
        (transport.lower() not in ("udp", "tcp"), "transport"),
        (not _uint(priority, 0, 2**32 - 1), "priority"),
        (not _address(address), "address (an IP or an mDNS .local name)"),
        (not _uint(port, 0, 65535), "port"),
        (typ != "typ" or ctype not in _CANDIDATE_TYPES, "type"),
    ]
    for name, extra in zip(bits[8::2], bits[9::2], strict=True):
        if name == "rport":
            problems.append((not _uint(extra, 0, 65535), "rport"))
        elif name == "raddr":
            problems.append((not _address(extra), "raddr"))
    for bad, what in problems:
        if bad:
            raise SdpError(f"line {number}: a=candidate has an invalid {what}")


def _fmtp(number: int, value: str | None) -> None:
    checked = _need(number, "fmtp", value, _FMTP, "'<payload type> <parameters>'")
    for param in checked.split(" ", 1)[1].split(";"):
        key, sep, setting = param.partition("=")
        if sep and key in FMTP_INT_PARAMETERS and _UINT.match(setting) is None:
            raise SdpError(f"line {number}: a=fmtp parameter {_show(key)} must be a number")


def _pattern(name: str, pattern: re.Pattern[str], form: str) -> Callable[[int, str | None], None]:
    def check(number: int, value: str | None) -> None:
        _need(number, name, value, pattern, form)

    return check


def _present(name: str) -> Callable[[int, str | None], None]:
    def check(number: int, value: str | None) -> None:
        if value is None or not value.strip():
            raise SdpError(f"line {number}: a={name} needs a value")

    return check


def _ssrc_group(number: int, value: str | None) -> None:
    bits = (value or "").split()
    if not bits or not all(_uint(bit, 0, 2**32 - 1) for bit in bits[1:]):
        raise SdpError(f"line {number}: a=ssrc-group must be '<semantics> <ssrc>...'")


_CHECKS: Final[dict[str, Callable[[int, str | None], None]]] = {
    "fingerprint": _fingerprint,
    "candidate": _candidate,
    "fmtp": _fmtp,
    "ssrc-group": _ssrc_group,
    "setup": _pattern("setup", re.compile(r"^(actpass|active|passive)$"), "actpass|active|passive"),
    "ice-ufrag": _pattern("ice-ufrag", _ICE_UFRAG, "4-256 ice-chars (letters, digits, + or /)"),
    "ice-pwd": _pattern("ice-pwd", _ICE_PWD, "22-256 ice-chars (letters, digits, + or /)"),
    "mid": _pattern("mid", _TOKEN, "a token of 1-64 characters"),
    "rtpmap": _pattern("rtpmap", _RTPMAP, "'<payload type> <name>/<rate>[/<channels>]'"),
    "rtcp-fb": _pattern("rtcp-fb", _RTCP_FB, "'<payload type|*> <type> [<parameter>]'"),
    "extmap": _pattern("extmap", _EXTMAP, "'<id>[/<direction>] <uri>'"),
    "rtcp": _pattern("rtcp", _RTCP, "'<port> [IN IP4|IP6 <address>]'"),
    "ssrc": _pattern("ssrc", _SSRC, "'<ssrc> <attribute>:<value>'"),
    "sctpmap": _pattern("sctpmap", _SCTPMAP, "'<number> <app>'"),
    "sctp-port": _pattern("sctp-port", re.compile(r"^[0-9]{1,5}$"), "a port number"),
    "max-message-size": _pattern("max-message-size", _UINT, "a number"),
    "group": _present("group"),
    "msid-semantic": _present("msid-semantic"),
}
"""Syntax checks of the attributes aiortc reads (others are ignored, as aiortc does)."""


def _check_attributes(section: _Section) -> None:
    """The syntax of each attribute aiortc reads, and the bounded counts (session or media)."""
    for number, name, value in section.attributes:
        check = _CHECKS.get(name)
        if check is not None:
            check(number, value)
    where = f"m={section.kind} (line {section.line})"
    if len(section.values("rtpmap")) > MAX_CODECS:
        raise SdpError(f"{where} has over {MAX_CODECS} a=rtpmap lines")
    if len(section.values("ssrc")) > MAX_SSRC_LINES:
        raise SdpError(f"{where} has over {MAX_SSRC_LINES} a=ssrc lines")
    mapped = {(value or "").split(" ", 1)[0] for value in section.values("rtpmap")}
    for number, name, value in section.attributes:
        if name == "fmtp" and (value or "").split(" ", 1)[0] not in mapped:
            raise SdpError(f"line {number}: a=fmtp for a payload type with no a=rtpmap")


def _uint(text: str, low: int, high: int) -> bool:
    return _UINT.match(text) is not None and low <= int(text) <= high


def _address(text: str) -> bool:
    if _MDNS.match(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------- structure


def _check_structure(session: _Section, sections: list[_Section]) -> CheckedOffer:
    audio = [s for s in sections if s.kind == "audio"]
    data = [s for s in sections if s.kind == "application"]
    others = [s for s in sections if s.kind not in ("audio", "application")]
    if others:
        raise SdpError(
            f"m={others[0].kind} (line {others[0].line}) is not supported: "
            "offer one audio section and optionally a data channel"
        )
    if len(audio) != 1:
        raise SdpError(
            "the offer has no m=audio section"
            if not audio
            else "the offer has more than one m=audio section"
        )
    if len(data) > 1:
        raise SdpError("the offer has more than one data channel (m=application) section")
    mids: list[str] = []
    for section in sections:
        mids.append(_check_transport(session, section))
    if len(set(mids)) != len(mids):
        raise SdpError("two media sections have the same a=mid")
    for value in session.values("group"):
        bits = (value or "").split()
        if bits and bits[0] == "BUNDLE" and not set(bits[1:]) <= set(mids):
            raise SdpError("a=group:BUNDLE names a mid that no media section has")
    candidates = [value for s in sections for value in s.values("candidate") if value is not None]
    if len(candidates) > MAX_CANDIDATES:
        raise SdpError(f"the offer has {len(candidates)} ICE candidates; at most {MAX_CANDIDATES}")
    mdns = sum(1 for c in candidates if c.split()[4].endswith(".local"))
    if mdns > MAX_MDNS_CANDIDATES:
        raise SdpError(f"the offer has {mdns} mDNS candidates; at most {MAX_MDNS_CANDIDATES}")
    codecs = _check_audio(audio[0])
    if data:
        _check_data(data[0])
    return CheckedOffer(codecs, bool(data), len(candidates))


def _last(session: _Section, section: _Section, name: str) -> str | None:
    """An attribute's value as aiortc sees it: the section's last, else the session's last."""
    for source in (section, session):
        values = source.values(name)
        if values:
            return values[-1]
    return None


def _check_transport(session: _Section, section: _Section) -> str:
    """ICE, DTLS and mid of one section; returns its mid."""
    where = f"m={section.kind} (line {section.line})"
    mids = section.values("mid")
    if len(mids) != 1 or mids[0] is None:
        raise SdpError(f"{where} needs exactly one a=mid")
    if _last(session, section, "ice-ufrag") is None or _last(session, section, "ice-pwd") is None:
        raise SdpError(f"{where} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
    if _last(session, section, "setup") is None:
        raise SdpError(f"{where} has no DTLS role (a=setup:actpass)")
    fingerprints = [
        (value or "").split()[0].lower()
        for value in session.values("fingerprint") + section.values("fingerprint")
    ]
    if not fingerprints:
        raise SdpError(f"{where} has no DTLS fingerprint (a=fingerprint)")
    if not VERIFIED_FINGERPRINTS & set(fingerprints):
        raise SdpError(
            f"{where}: no fingerprint uses a hash this server verifies "
            f"({', '.join(sorted(VERIFIED_FINGERPRINTS))})"
        )
    return mids[0]


def _check_audio(section: _Section) -> tuple[str, ...]:
    where = f"m=audio (line {section.line})"
    if section.proto not in AUDIO_PROFILES:
        raise SdpError(
            f"{where}: protocol {_show(section.proto)} is not DTLS-SRTP (use UDP/TLS/RTP/SAVPF)"
        )
    formats: list[int] = []
    for fmt in section.formats:
        if not _uint(fmt, 0, 127) or int(fmt) in FORBIDDEN_PAYLOAD_TYPES:
            raise SdpError(f"{where}: {_show(fmt)} is not an RTP payload type")
        formats.append(int(fmt))
    if len(set(formats)) != len(formats):
        raise SdpError(f"{where} lists a payload type twice")
    directions = [name for _, name, _ in section.attributes if name in DIRECTIONS]
    if len(directions) != 1:
        raise SdpError(f"{where} needs one direction attribute (a=sendrecv)")
    if directions[0] not in SEND_DIRECTIONS:
        raise SdpError(f"{where} is a={directions[0]}: the caller must send audio (a=sendrecv)")
    if not section.has("rtcp-mux"):
        raise SdpError(f"{where} needs a=rtcp-mux")
    rtpmaps: dict[int, tuple[str, int]] = {}
    for value in section.values("rtpmap"):
        pt_text, _, codec = (value or "").partition(" ")  # syntax checked with the attributes
        name, _, rate = codec.partition("/")
        pt = int(pt_text)
        if pt not in formats:
            raise SdpError(f"{where}: a=rtpmap:{pt} is not a payload type of the m= line")
        if pt in rtpmaps:
            raise SdpError(f"{where}: payload type {pt} has two a=rtpmap lines")
        rtpmaps[pt] = (name, int(rate.partition("/")[0]))
    answerable: list[str] = []
    for pt in formats:  # the caller's order of preference
        found = rtpmaps.get(pt)
        if found is not None and _answerable(pt, *found):
            answerable.append(f"{found[0]}/{found[1]}")
    if not answerable:
        offered = [f"{name}/{rate}" for name, rate in list(rtpmaps.values())[:8]]
        supported = ", ".join(f"{name}/{rate}" for name, rate, _ in ANSWERABLE_CODECS)
        raise SdpError(
            f"{where}: no codec this server can answer (offered: "
            f"{', '.join(_show(c) for c in offered) or 'no a=rtpmap'}; supported: {supported})"
        )
    return tuple(answerable)


def _answerable(pt: int, name: str, rate: int) -> bool:
    """Whether aiortc answers this codec on the payload type the caller offered it on."""
    return any(
        name.lower() == own.lower()
        and rate == own_rate
        and (pt in DYNAMIC_PAYLOAD_TYPES or pt == own_pt)
        for own, own_rate, own_pt in ANSWERABLE_CODECS
    )


def _check_data(section: _Section) -> None:
    where = f"m=application (line {section.line})"
    if section.proto in DATA_PROFILES:
        if section.formats != ["webrtc-datachannel"]:
            raise SdpError(f"{where}: the format of a data channel is webrtc-datachannel")
        if not section.values("sctp-port"):
            raise SdpError(f"{where} needs a=sctp-port")
    elif section.proto == LEGACY_DATA_PROFILE:
        if not section.formats or not _uint(section.formats[0], 0, 65535):
            raise SdpError(f"{where}: DTLS/SCTP needs the SCTP port as its format")
    else:
        raise SdpError(
            f"{where}: protocol {_show(section.proto)} is not a data channel (UDP/DTLS/SCTP)"
        )
