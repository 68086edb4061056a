"""sipp as the real phone: scenarios, the caller's audio, running sipp, capturing RTP.

sipp 3.6.1 (Debian's ``sip-tester``; ``scripts/install_sipp.sh``) places the call.
Scenario templates live in ``tests/sipp/``: ``{{placeholder}}`` values are filled
in here (a line holding only an empty placeholder is dropped), ``[keyword]`` is
sipp's own. What sipp 3.6.1 can do, read from its source (``src/actions.cpp``,
``rtpstream.cpp``, ``send_packets.c``, ``call.cpp``):

- ``<exec rtp_stream="file,loops,pt"/>`` plays a raw file as RTP: payload types 0
  (PCMU), 8 (PCMA) and 9 (G.722, 160 bytes every 20 ms, 8 kHz RTP clock) at 20 ms,
  18 (G.729) and 98 (iLBC, 30 ms); no marker bit. The value is a literal (or a
  whole ``[key]`` given with ``-key``); the file is read when the scenario loads.
  ``rtp_stream="pause"`` / ``"resume"`` pause and resume it.
- RTP leaves from sipp's one media socket, ``-mi``:``-mp`` (default 6000, and it
  also binds ``-mp`` + 2 for video), whatever port the SDP offer advertises. The
  offer here advertises the test's ``RtpCapture`` port, so the server's audio
  comes to Python while sipp's arrives from the ``-mp`` port.
- ``play_pcap_audio`` replays a pcap (the RFC 2833 digits shipped in
  ``/usr/share/sip-tester/dtmf_2833_{0-9,star,pound}.pcap``: payload type 101,
  volume 10, 20 ms apart with durations growing to 2240 ticks, the end packet sent
  three times) through
  a raw socket, so it needs root or CAP_NET_RAW (``can_play_pcap``). Its source
  port is the ``-mp`` port only if the message carries ``[media_port]`` on a line
  that mentions "audio": the offer's ``i=`` line does that.
- ``-rtp_echo`` echoes what arrives at ``-mp`` back to its sender.

RTP capture and the codecs are in ``tests.rtp`` (re-exported here).

A call's steps (stream the question, pause, DTMF, re-INVITE, ...) are small
objects rendered into the scenario; ``run_sipp`` runs it with the message and
error traces on, kills sipp on timeout and reads the traces back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pytest

from media.frames import PCM
from tests.rtp import (
    CODECS,
    G722,
    LOOPBACK,
    PCMA,
    PCMU,
    TELEPHONE_EVENT_PT,
    Codec,
    DtmfEvent,
    RtpCapture,
    RtpPacket,
    encode_audio,
)

TEMPLATES = Path(__file__).resolve().parent / "sipp"
SIPP_SHARE = Path("/usr/share/sip-tester")
BYE_LABEL = "callee_hung_up"
"""Label of the caller's answer to the callee's BYE (pauses jump there when it comes)."""
KILL_GRACE_S = 5.0
"""How long after its own ``-timeout`` sipp gets before the harness kills it."""


# --- finding sipp ------------------------------------------------------------------------


def sipp_path() -> str | None:
    """The sipp executable, if installed."""
    return shutil.which("sipp")


def sipp_or_skip() -> str:
    """The sipp executable; skips the test if it is missing (fails under ``CI``)."""
    path = sipp_path()
    if path:
        return path
    reason = "sipp is not installed (scripts/install_sipp.sh installs Debian's sip-tester)"
    if os.environ.get("CI"):
        pytest.fail(f"the SIP tests must run in CI: {reason}")
    pytest.skip(reason)


def can_play_pcap() -> bool:
    """Whether sipp may open the raw socket ``play_pcap_audio`` sends through
    (root, or CAP_NET_RAW in this process's effective set, which sipp inherits)."""
    if os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 13))  # CAP_NET_RAW
    return False


def dtmf_pcap(digit: str) -> Path:
    """sipp's shipped RFC 2833 pcap of one digit (``0-9``, ``*``, ``#``)."""
    names = {"*": "star", "#": "pound"}
    if len(digit) != 1 or not (digit.isdigit() or digit in names):
        raise ValueError(f"sipp ships no DTMF pcap for {digit!r}")
    return SIPP_SHARE / f"dtmf_2833_{names.get(digit, digit)}.pcap"


# --- ports ---------------------------------------------------------------------------------


def free_udp_port(host: str = LOOPBACK) -> int:
    """An unused UDP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_sip_port(transport: str = "udp", host: str = LOOPBACK) -> int:
    """A port free for SIP over ``transport`` (a TCP port that is free for UDP too)."""
    for _ in range(100):
        port = free_udp_port(host)
        if transport == "udp" or not port_bound(port, "tcp", host):
            return port
    raise RuntimeError("no free port for SIP")


def free_media_port(host: str = LOOPBACK) -> int:
    """An even UDP port ``p`` with ``p + 2`` free too: sipp's ``-mp`` binds both (audio and
    video) and, given ``-mp``, does not look further."""
    for _ in range(200):
        port = free_udp_port(host) & ~1
        if port + 2 > 65535 or port < 1024:
            continue
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 2):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return port
    raise RuntimeError("no free pair of UDP ports for sipp's media")


def port_bound(port: int, transport: str = "udp", host: str = LOOPBACK) -> bool:
    """Whether something already holds ``host:port`` (UDP, or TCP)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def write_audio(directory: Path, name: str, pcm: PCM, rate: int, codec: Codec) -> Path:
    """Write ``pcm`` as a raw ``codec`` file for ``rtp_stream``; returns its path.

    The name must be plain (sipp takes the attribute's text up to the first comma).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"unsafe file name for a sipp scenario: {name!r}")
    path = directory / f"{name}{codec.suffix}"
    path.write_bytes(encode_audio(pcm, rate, codec))
    return path


def spoken_audio(
    directory: Path,
    text: str,
    codec: Codec,
    *,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
    name: str = "question",
) -> Path:
    """Piper speech of ``text`` (between silences) as a raw ``codec`` file for sipp."""
    from tests.speech import compose

    pcm = compose(lead_s, text, tail_s, rate=codec.sample_rate)
    return write_audio(directory, name, pcm, codec.sample_rate, codec)


def audio_seconds(path: Path, codec: Codec) -> float:
    """Duration of a raw ``codec`` file as sipp streams it."""
    return path.stat().st_size / codec.bytes_per_20ms * 0.020


# --- SDP and templates -------------------------------------------------------------------


def sdp(
    rtp_port: int,
    codecs: Sequence[Codec] = (PCMU,),
    *,
    host: str = LOOPBACK,
    direction: str = "sendrecv",
    telephone_event: bool = True,
    version: int = 1,
    media_port_line: bool = True,
) -> str:
    """An SDP offer (or answer): audio to ``host:rtp_port`` with ``codecs`` in order of
    preference, RFC 4733 events on payload type 101, ptime 20, the given direction.

    ``media_port_line`` adds an ``i=`` line naming sipp's ``[media_port]``, so that pcap
    playback sends from that port (see the module docstring).
    """
    if direction not in ("sendrecv", "sendonly", "recvonly", "inactive"):
        raise ValueError(f"bad SDP direction {direction!r}")
    pts = [c.payload_type for c in codecs]
    lines = [
        "v=0",
        f"o=sipp 4242 {version} IN IP4 {host}",
        "s=parley sipp",
    ]
    if media_port_line:
        lines.append("i=sipp sends audio from port [media_port]")
    lines += [f"c=IN IP4 {host}", "t=0 0"]
    if telephone_event:
        pts.append(TELEPHONE_EVENT_PT)
    lines.append(f"m=audio {rtp_port} RTP/AVP {' '.join(map(str, pts))}")
    lines += [f"a=rtpmap:{c.rtpmap}" for c in codecs]
    if telephone_event:
        lines += [
            f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000",
            f"a=fmtp:{TELEPHONE_EVENT_PT} 0-16",
        ]
    lines += ["a=ptime:20", f"a={direction}"]
    return "\n".join(lines)


_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def render(template: str, values: Mapping[str, object]) -> str:
    """Fill ``{{name}}`` placeholders of ``tests/sipp/<template>``.

    Every placeholder must have a value and every value a placeholder (typos fail
    loudly); a line holding only a placeholder whose value is empty is dropped (an
    empty line would end a SIP message's headers).
    """
    text = (TEMPLATES / template).read_text()
    names = set(_PLACEHOLDER.findall(text))
    missing = names - set(values)
    unused = set(values) - names
    if missing or unused:
        raise KeyError(f"{template}: missing {sorted(missing)}, unused {sorted(unused)}")
    out: list[str] = []
    for line in text.splitlines():
        m = _PLACEHOLDER.fullmatch(line.strip())
        if m and str(values[m.group(1)]) == "":
            continue
        out.append(_PLACEHOLDER.sub(lambda mm: str(values[mm.group(1)]), line))
    return "\n".join(out) + "\n"


# --- call steps -------------------------------------------------------------------------------


@dataclass(slots=True)
class Party:
    """Who calls whom, and where this side (the caller; or the stand-in callee) wants its
    audio: the SDP it sends names ``rtp_host:rtp_port`` and ``codecs``."""

    rtp_port: int
    """Port of this side's RTP listener (an ``RtpCapture``), advertised in its SDP."""
    codecs: Sequence[Codec] = (PCMU,)
    """Offered (or answered) codecs, preferred first."""
    rtp_host: str = LOOPBACK
    telephone_event: bool = True
    """Offer RFC 4733 events (payload type 101)."""
    caller: str = "sipp"
    """User part of the caller's From and Contact URIs."""
    caller_name: str = "sipp caller"
    """Display name in the caller's From."""
    callee: str = "agent"
    """User part of the Request-URI and To."""

    def __post_init__(self) -> None:
        for what in (self.caller, self.callee):
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", what):
                raise ValueError(f"SIP user parts here are plain words: {what!r}")
        if not re.fullmatch(r"[A-Za-z0-9 _.,'-]*", self.caller_name):
            raise ValueError(f"display names here are plain text: {self.caller_name!r}")
        if not 0 < self.rtp_port < 65536 or not self.codecs:
            raise ValueError("an SDP needs a port and at least one codec")

    def headers(self) -> dict[str, object]:
        """Template values of the dialog's identities."""
        return {"caller": self.caller, "caller_name": self.caller_name, "callee": self.callee}

    def offer(self, direction: str = "sendrecv", version: int = 1) -> str:
        """The SDP offer of this party."""
        return sdp(
            self.rtp_port,
            self.codecs,
            host=self.rtp_host,
            direction=direction,
            telephone_event=self.telephone_event,
            version=version,
        )


@dataclass(slots=True)
class CallContext:
    """What steps share while a scenario is rendered: the party, transaction names, the
    SDP version of the next re-offer."""

    party: Party
    hangup: str = "caller"
    """Who ends the call: with ``"callee"`` the caller's pauses end early on its BYE."""
    counter: int = 0
    sdp_version: int = 1

    def next_txn(self, kind: str) -> str:
        """A fresh sipp transaction name."""
        self.counter += 1
        return f"{kind}{self.counter}"


class Step(Protocol):
    """Something the caller does during the call."""

    def render(self, ctx: CallContext) -> str:
        """The scenario XML of the step."""
        ...


@dataclass(frozen=True, slots=True)
class Stream:
    """Start streaming a raw audio file (see ``write_audio``) as RTP; sipp goes on at once."""

    path: Path
    codec: Codec = PCMU
    loops: int = 1
    """Times to play it; -1: until the call ends."""

    def render(self, ctx: CallContext) -> str:
        path = str(self.path)
        if "," in path or '"' in path or "&" in path or "<" in path:
            raise ValueError(f"sipp cannot stream a file named {path!r}")
        if not self.path.is_file():
            raise FileNotFoundError(path)
        return (
            "  <nop><action>"
            f'<exec rtp_stream="{path},{self.loops},{self.codec.payload_type}"/>'
            "</action></nop>\n"
        )


@dataclass(frozen=True, slots=True)
class StreamPause:
    """Pause the RTP stream (``rtp_stream="pause"``)."""

    def render(self, ctx: CallContext) -> str:
        return '  <nop><action><exec rtp_stream="pause"/></action></nop>\n'


@dataclass(frozen=True, slots=True)
class StreamResume:
    """Resume the paused RTP stream."""

    def render(self, ctx: CallContext) -> str:
        return '  <nop><action><exec rtp_stream="resume"/></action></nop>\n'


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait (the stream goes on meanwhile).

    In a call the callee ends, the pause is a wait for its BYE that times out: sipp
    treats any message arriving during a plain ``<pause>`` as unexpected, and the
    agent may hang up at any moment.
    """

    seconds: float

    def render(self, ctx: CallContext) -> str:
        ms = max(1, round(self.seconds * 1000))
        if ctx.hangup != "callee":
            return f'  <pause milliseconds="{ms}"/>\n'
        label = ctx.next_txn("paused")
        return (
            f'  <recv request="BYE" timeout="{ms}" ontimeout="{label}" next="{BYE_LABEL}"/>\n'
            f'  <label id="{label}"/>\n'
        )


@dataclass(frozen=True, slots=True)
class DtmfPcap:
    """Send RFC 2833 digits by replaying sipp's shipped pcaps (needs ``can_play_pcap``).

    Each digit's pcap lasts 140 ms; ``gap_s`` separates the digits. Packets leave from
    sipp's media port with the pcap's payload type 101.
    """

    digits: str
    gap_s: float = 0.3

    def render(self, ctx: CallContext) -> str:
        out = []
        for digit in self.digits:
            out.append(
                f'  <nop><action><exec play_pcap_audio="{dtmf_pcap(digit)}"/></action></nop>\n'
            )
            out.append(Pause(0.16 + self.gap_s).render(ctx))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class DtmfInfo:
    """Send digits as SIP INFO (``application/dtmf-relay``), each answered with 200."""

    digits: str
    duration_ms: int = 160

    def render(self, ctx: CallContext) -> str:
        return "".join(
            render(
                "uac_info_dtmf.xml",
                {
                    **ctx.party.headers(),
                    "txn": ctx.next_txn("info"),
                    "digit": digit,
                    "duration_ms": self.duration_ms,
                },
            )
            for digit in self.digits
        )


@dataclass(frozen=True, slots=True)
class Reinvite:
    """A re-INVITE with the same offer in a new direction: ``sendonly`` or ``inactive``
    put the agent on hold, ``sendrecv`` takes it off."""

    direction: str

    def render(self, ctx: CallContext) -> str:
        ctx.sdp_version += 1
        return render(
            "uac_reinvite.xml",
            {
                **ctx.party.headers(),
                "txn": ctx.next_txn("reinvite"),
                "subject": f"re-INVITE {self.direction}",
                "sdp": ctx.party.offer(self.direction, ctx.sdp_version),
            },
        )


def _in_call(
    party: Party, steps: Iterable[Step], hangup: str = "caller"
) -> tuple[CallContext, str]:
    ctx = CallContext(party, hangup)
    return ctx, "".join(step.render(ctx) for step in steps)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scenario file written for one run, and what the harness needs to know of it."""

    path: Path
    name: str
    callee: str | None = None
    """User part of the Request-URI of a caller's INVITE (for the digest ``uri``)."""


def _write(directory: Path, name: str, xml: str, callee: str | None = None) -> Scenario:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"scenario names are plain words: {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.xml"
    path.write_text(xml)
    return Scenario(path, name, callee)


def call(
    directory: Path,
    party: Party,
    steps: Sequence[Step] = (),
    *,
    name: str = "call",
    hangup: str = "caller",
    bye_timeout_s: float = 30.0,
    digest: bool = False,
) -> Scenario:
    """A call that is answered: INVITE with ``party``'s offer, 200, ACK, ``steps``, then the
    caller's BYE (``hangup="caller"``) or the callee's, answered with 200
    (``hangup="callee"``; it may come during any ``Pause``, and the call fails if none
    comes within ``bye_timeout_s`` after the steps).

    ``digest``: the first INVITE is expected to be challenged (401/407); the second
    carries credentials from ``run_sipp(..., auth=(user, password))``.
    """
    if hangup not in ("caller", "callee"):
        raise ValueError("hangup is 'caller' or 'callee'")
    _, in_call = _in_call(party, steps, hangup)
    if hangup == "caller":
        ending = render("uac_bye.xml", party.headers())
    else:
        ending = render(
            "uac_await_bye.xml",
            {
                "caller": party.caller,
                "bye_timeout_ms": round(bye_timeout_s * 1000),
                "bye_label": BYE_LABEL,
            },
        )
    offer = party.offer()
    challenge = (
        render("uac_digest_challenge.xml", {**party.headers(), "name": name, "sdp": offer})
        if digest
        else ""
    )
    xml = render(
        "uac_call.xml",
        {
            **party.headers(),
            "name": name,
            "sdp": offer,
            "challenge": challenge,
            "authorization": "[authentication]" if digest else "",
            "in_call": in_call,
            "ending": ending,
        },
    )
    return _write(directory, name, xml, party.callee)


def cancel(directory: Path, party: Party, *, ring_s: float = 0.2, name: str = "cancel") -> Scenario:
    """INVITE, wait for 180 and ``ring_s`` more, CANCEL; expect 200 (CANCEL) and 487
    (INVITE) in either order; ACK the 487."""
    xml = render(
        "uac_cancel.xml",
        {
            **party.headers(),
            "name": name,
            "sdp": party.offer(),
            "ring_ms": max(1, round(ring_s * 1000)),
        },
    )
    return _write(directory, name, xml, party.callee)


def rejected(
    directory: Path, party: Party, codes: Sequence[int], *, name: str = "rejected"
) -> Scenario:
    """INVITE that must be refused with one of ``codes`` (e.g. ``(486, 503)`` at capacity,
    ``(403,)`` when not allowlisted, ``(488,)`` with no common codec); ACK it."""
    if not codes or any(not 300 <= c <= 699 for c in codes):
        raise ValueError(f"final failure codes are 300-699: {codes}")
    final = [
        f'  <recv response="{c}" optional="true" response_txn="invite" next="ack"/>'
        for c in codes[:-1]
    ]
    final.append(f'  <recv response="{codes[-1]}" response_txn="invite"/>')
    xml = render(
        "uac_rejected.xml",
        {
            **party.headers(),
            "name": name,
            "sdp": party.offer(),
            "codes": ", ".join(map(str, codes)),
            "final": "\n".join(final),
        },
    )
    return _write(directory, name, xml, party.callee)


def options(directory: Path, party: Party, *, code: int = 200, name: str = "options") -> Scenario:
    """One OPTIONS outside a dialog (a trunk's keep-alive), expecting ``code``."""
    xml = render("uac_options.xml", {**party.headers(), "name": name, "code": code})
    return _write(directory, name, xml, party.callee)


# --- a stand-in callee (sipp as the UAS, for the harness's own tests) -----------------------


@dataclass(frozen=True, slots=True)
class AnswerReinvite:
    """Callee step: answer the caller's re-INVITE with ``direction`` (the offer's mirrored:
    ``recvonly`` for ``sendonly``, ``inactive`` for ``inactive``, ``sendrecv``)."""

    direction: str

    def render(self, ctx: CallContext) -> str:
        ctx.sdp_version += 1
        return render(
            "uas_reinvite.xml",
            {"callee": ctx.party.callee, "sdp": ctx.party.offer(self.direction, ctx.sdp_version)},
        )


@dataclass(frozen=True, slots=True)
class AnswerInfo:
    """Callee step: 200 for one SIP INFO."""

    def render(self, ctx: CallContext) -> str:
        return render("uas_info.xml", {})


def callee(
    directory: Path,
    party: Party,
    steps: Sequence[Step] = (),
    *,
    name: str = "callee",
    hangup: str = "caller",
    hangup_after_s: float = 0.5,
    digest: tuple[str, str] | None = None,
) -> Scenario:
    """sipp as the called party: answers with ``party``'s SDP (its ``rtp_port`` and
    ``codecs``), runs ``steps``, then awaits the caller's BYE (``hangup="caller"``) or
    sends its own after ``hangup_after_s`` (``"callee"``). ``digest`` (user, password):
    challenge the first INVITE and check the second's credentials (403 if wrong)."""
    if hangup not in ("caller", "callee"):
        raise ValueError("hangup is 'caller' or 'callee'")
    _, in_call = _in_call(party, steps)
    if hangup == "caller":
        ending = render("uas_await_bye.xml", {})
    else:
        ending = render(
            "uas_bye.xml",
            {
                "caller": party.caller,
                "callee": party.callee,
                "after_ms": max(1, round(hangup_after_s * 1000)),
            },
        )
    actions: list[str] = []
    if hangup == "callee":  # its BYE needs the caller's tag
        actions.append(
            '<ereg regexp=";tag=([^;> ]+)" search_in="hdr" header="From:"'
            ' assign_to="_,caller_tag"/>'
        )
    challenge = authorize = ""
    if digest is not None:
        user, password = digest
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", user + password):
            raise ValueError("digest user and password must be plain words")
        challenge = render("uas_digest_challenge.xml", {"user": user, "password": password})
        actions.append(
            f'<verifyauth assign_to="authvalid" username="{user}" password="{password}"/>'
        )
        authorize = render("uas_authorize.xml", {})
    invite_actions = (
        "    <action>\n" + "".join(f"      {a}\n" for a in actions) + "    </action>"
        if actions
        else ""
    )
    xml = render(
        "uas_call.xml",
        {
            "name": name,
            "callee": party.callee,
            "sdp": party.offer(),
            "challenge": challenge,
            "invite_actions": invite_actions,
            "authorize": authorize,
            "in_call": in_call,
            "ending": ending,
        },
    )
    return _write(directory, name, xml)


def callee_cancelled(directory: Path, *, name: str = "callee_cancelled") -> Scenario:
    """sipp as a called party that rings until the caller cancels (200, then 487)."""
    return _write(directory, name, render("uas_cancel.xml", {"name": name}))


def callee_options(directory: Path, *, name: str = "callee_options") -> Scenario:
    """sipp as a server that answers one OPTIONS with 200."""
    return _write(directory, name, render("uas_options.xml", {"name": name}))


def callee_refusing(
    directory: Path, code: int, reason: str, *, name: str = "callee_refusing"
) -> Scenario:
    """sipp as a called party that refuses the call with ``code`` ``reason``."""
    if not 300 <= code <= 699 or not re.fullmatch(r"[A-Za-z ]+", reason):
        raise ValueError(f"bad final response {code} {reason!r}")
    return _write(
        directory, name, render("uas_reject.xml", {"name": name, "code": code, "reason": reason})
    )


# --- running sipp -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SipMessage:
    """One SIP message from sipp's ``-trace_msg`` log."""

    direction: str
    """``"sent"`` or ``"received"`` (by sipp)."""
    text: str

    @property
    def start_line(self) -> str:
        """The request or status line."""
        return self.text.split("\n", 1)[0].strip()

    @property
    def status(self) -> int | None:
        """The status code of a response, else None."""
        m = re.match(r"SIP/2\.0 (\d{3}) ", self.start_line)
        return int(m.group(1)) if m else None

    @property
    def method(self) -> str:
        """The request method, or the CSeq method of a response."""
        if self.status is None:
            return self.start_line.split(" ", 1)[0]
        m = re.search(r"^CSeq:\s*\d+\s+(\S+)", self.text, re.MULTILINE | re.IGNORECASE)
        return m.group(1) if m else ""

    def header(self, name: str) -> str | None:
        """The first value of a header (full name, case-insensitive)."""
        m = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", self.head, re.MULTILINE | re.IGNORECASE)
        return m.group(1).strip() if m else None

    @property
    def head(self) -> str:
        """Start line and headers."""
        return self.text.replace("\r\n", "\n").split("\n\n", 1)[0]

    @property
    def body(self) -> str:
        """The body (the SDP of an INVITE or 200)."""
        parts = self.text.replace("\r\n", "\n").split("\n\n", 1)
        return parts[1] if len(parts) == 2 else ""


_TRACE_SPLIT = re.compile(r"^-{20,} [^\n]*\n", re.MULTILINE)
_TRACE_HEAD = re.compile(r"^(?:UDP|TCP|TLS|SCTP) message (sent|received)[^\n]*\n\n?", re.IGNORECASE)


def parse_messages(log: str) -> list[SipMessage]:
    """The messages of a ``-trace_msg`` log, in order."""
    out: list[SipMessage] = []
    for chunk in _TRACE_SPLIT.split(log):
        m = _TRACE_HEAD.match(chunk)
        if m:
            out.append(SipMessage(m.group(1).lower(), chunk[m.end() :].strip("\n")))
    return out


@dataclass(frozen=True, slots=True)
class SippResult:
    """What one sipp run did."""

    command: list[str]
    returncode: int
    """sipp's exit status: 0 all calls succeeded, 1 one failed, 255 its ``-timeout`` ran
    out (or a fatal error: a bad scenario, a busy port); -9 when killed here."""
    timed_out: bool
    """Killed by the harness after ``timeout_s`` (sipp did not stop by itself)."""
    stdout: str
    stderr: str
    messages: list[SipMessage]
    """Every SIP message sipp sent or received (``-trace_msg``)."""
    errors: str
    """sipp's error log (``-trace_err``): unexpected messages, aborted calls."""
    screen: str
    """sipp's final statistics screen (``-trace_screen``)."""

    @property
    def ok(self) -> bool:
        """The call(s) completed as the scenario says."""
        return self.returncode == 0 and not self.timed_out

    def received(self, method_or_status: str | int | None = None) -> list[SipMessage]:
        """Messages sipp received (optionally only one request method or status code)."""
        return [m for m in self.messages if m.direction == "received" and _is(m, method_or_status)]

    def sent(self, method_or_status: str | int | None = None) -> list[SipMessage]:
        """Messages sipp sent (optionally only one request method or status code)."""
        return [m for m in self.messages if m.direction == "sent" and _is(m, method_or_status)]

    def statuses(self) -> list[int]:
        """Status codes of the responses sipp received, in order (retransmissions too)."""
        return [m.status for m in self.received() if m.status is not None]

    def describe(self) -> str:
        """A failure message: the command, exit status, errors and the SIP exchange."""
        lines = [
            f"sipp exited {self.returncode}{' (killed on timeout)' if self.timed_out else ''}",
            " ".join(self.command),
            *(f"  {m.direction:>8}: {m.start_line}" for m in self.messages),
        ]
        if self.errors.strip():
            lines.append("errors:\n" + self.errors.strip()[-3000:])
        if self.stderr.strip():
            lines.append("stderr:\n" + self.stderr.strip()[-2000:])
        return "\n".join(lines)


def _is(message: SipMessage, what: str | int | None) -> bool:
    if what is None:
        return True
    if isinstance(what, int):
        return message.status == what
    return message.status is None and message.method == what


class SippProcess:
    """One running sipp (a UAC placing calls, or a UAS waiting for them).

    Use ``start_sipp`` to make one and ``await proc.wait()`` for its ``SippResult``;
    ``async with`` kills it on the way out if it is still running.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        command: list[str],
        workdir: Path,
        scenario: Scenario,
        timeout_s: float,
        started: float,
        local_port: int,
        media_port: int,
        transport: str,
    ) -> None:
        self._proc = proc
        self.command = command
        self.workdir = workdir
        self.scenario = scenario
        self.timeout_s = timeout_s
        self._started = started
        self.local_port = local_port
        """sipp's SIP port (``-p``)."""
        self.media_port = media_port
        """sipp's RTP port (``-mp``): its RTP leaves from here."""
        self.transport = transport
        self._result: SippResult | None = None

    @property
    def pid(self) -> int:
        """The process id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once sipp has ended (and been reaped), else None."""
        return self._proc.returncode

    async def wait_listening(self, timeout_s: float = 5.0) -> None:
        """Return once sipp's SIP socket is bound, so a call sent to it is not lost."""
        deadline = time.monotonic() + timeout_s
        while not port_bound(self.local_port, self.transport):
            if self._proc.returncode is not None:
                raise RuntimeError(
                    "sipp exited before listening:\n" + (await self.wait()).describe()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"sipp did not bind {self.transport} port {self.local_port}")
            await asyncio.sleep(0.02)

    async def wait(self) -> SippResult:
        """Wait for sipp to finish (killing it ``timeout_s`` after it started)."""
        if self._result is not None:
            return self._result
        left = self.timeout_s - (time.monotonic() - self._started)
        timed_out = False
        try:
            out, err = await asyncio.wait_for(self._proc.communicate(), max(0.1, left))
        except TimeoutError:
            timed_out = True
            await self.kill()
            out, err = await self._proc.communicate()
        except BaseException:
            await self.kill()
            raise
        self._result = self._collect(out, err, timed_out)
        return self._result

    async def kill(self) -> None:
        """Kill sipp now (idempotent) and reap it."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._proc.wait(), 5.0)

    def _collect(self, out: bytes, err: bytes, timed_out: bool) -> SippResult:
        def read(suffix: str) -> str:
            path = self.workdir / f"{self.scenario.name}.{suffix}"
            return path.read_text(errors="replace") if path.exists() else ""

        return SippResult(
            command=self.command,
            returncode=self._proc.returncode if self._proc.returncode is not None else -9,
            timed_out=timed_out,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            messages=parse_messages(read("messages.log")),
            errors=read("errors.log"),
            screen=read("screen.log"),
        )

    async def __aenter__(self) -> SippProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()


async def start_sipp(
    scenario: Scenario,
    server: tuple[str, int] | None = None,
    *,
    local_port: int | None = None,
    media_port: int | None = None,
    transport: str = "udp",
    calls: int = 1,
    timeout_s: float = 30.0,
    auth: tuple[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> SippProcess:
    """Start sipp on ``scenario``: a UAC calling ``server`` (host, port), or a UAS when
    ``server`` is None. SIP on 127.0.0.1:``local_port`` (default: a free port; sipp's own
    default is 5060), RTP from ``media_port`` (default: a free even port). sipp stops
    itself after ``calls`` calls or ``timeout_s`` (failing), and is killed 5 s later.
    ``auth`` is the digest user and password (``-au``/``-ap``).
    """
    exe = sipp_or_skip()
    if transport not in ("udp", "tcp"):
        raise ValueError("transport is 'udp' or 'tcp'")
    local_port = local_port or free_sip_port(transport)
    media_port = media_port or free_media_port()
    workdir = scenario.path.parent
    trace = {s: workdir / f"{scenario.name}.{s}" for s in ("messages.log", "errors.log")}
    for path in trace.values():
        path.unlink(missing_ok=True)
    command = [exe]
    if server is not None:
        # A caller answers stray INFO/OPTIONS/NOTIFY/UPDATE (keep-alives) with 200 (-aa)
        # instead of failing the call on them.
        command += [f"{server[0]}:{server[1]}", "-aa"]
    command += [
        "-sf", str(scenario.path),
        "-t", "u1" if transport == "udp" else "t1",
        "-i", LOOPBACK,
        "-p", str(local_port),
        "-mi", LOOPBACK,
        "-mp", str(media_port),
        "-m", str(calls),
        "-nostdin",
        "-timeout", f"{max(1, math.ceil(timeout_s))}s",
        "-timeout_error",
        "-trace_msg", "-message_file", str(trace["messages.log"]),
        "-trace_err", "-error_file", str(trace["errors.log"]),
        "-trace_screen", "-screen_file", str(workdir / f"{scenario.name}.screen.log"),
        "-f", "60",
    ]  # fmt: skip
    if auth is not None:
        command += ["-au", auth[0], "-ap", auth[1]]
        if server is not None and scenario.callee is not None:
            # The digest uri is the Request-URI (RFC 3261 22.4); sipp's default would be
            # sip:host:port, without the user.
            command += ["-auth_uri", f"{scenario.callee}@{server[0]}:{server[1]}"]
    command += list(extra_args)
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return SippProcess(
        proc,
        command,
        workdir,
        scenario,
        timeout_s + KILL_GRACE_S,
        time.monotonic(),
        local_port,
        media_port,
        transport,
    )


async def run_sipp(
    scenario: Scenario,
    server: tuple[str, int],
    *,
    timeout_s: float = 30.0,
    extra_args: Sequence[str] = (),
    **options: Any,
) -> SippResult:
    """Run sipp as the caller against ``server`` until its calls end; the result carries the
    exit status, output and the SIP messages exchanged. sipp is killed if it outlives
    ``timeout_s`` (+5 s) or if the awaiting task is cancelled. ``options`` go to
    ``start_sipp`` (``media_port``, ``transport``, ``calls``, ``auth``, ``local_port``)."""
    proc = await start_sipp(scenario, server, timeout_s=timeout_s, extra_args=extra_args, **options)
    async with proc:
        return await proc.wait()


__all__ = [  # with what the SIP tests use from tests.rtp
    "BYE_LABEL",
    "CODECS",
    "G722",
    "KILL_GRACE_S",
    "LOOPBACK",
    "PCMA",
    "PCMU",
    "SIPP_SHARE",
    "TELEPHONE_EVENT_PT",
    "TEMPLATES",
    "AnswerInfo",
    "AnswerReinvite",
    "CallContext",
    "Codec",
    "DtmfEvent",
    "DtmfInfo",
    "DtmfPcap",
    "Party",
    "Pause",
    "Reinvite",
    "RtpCapture",
    "RtpPacket",
    "Scenario",
    "SipMessage",
    "SippProcess",
    "SippResult",
    "Step",
    "Stream",
    "StreamPause",
    "StreamResume",
    "audio_seconds",
    "call",
    "callee",
    "callee_cancelled",
    "callee_options",
    "callee_refusing",
    "can_play_pcap",
    "cancel",
    "dtmf_pcap",
    "encode_audio",
    "free_media_port",
    "free_sip_port",
    "free_udp_port",
    "options",
    "parse_messages",
    "port_bound",
    "rejected",
    "render",
    "run_sipp",
    "sdp",
    "sipp_or_skip",
    "sipp_path",
    "spoken_audio",
    "start_sipp",
    "write_audio",
]
