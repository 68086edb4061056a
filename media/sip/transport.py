"""A SIP call as a call-bridge transport: RTP audio in and out, keypad and hold in.

The SIP server (``media.sip.server``) answers the INVITE; this object is the
call's ``DialogEvents`` listener and its ``media.transport.Transport``:

- audio in: the RTP session's decoded frames (8 kHz G.711 or 16 kHz G.722);
  the bridge normalises them to the pipeline's rate;
- audio out: the session's playout buffer, created at the codec's rate, sent
  as paced RTP packets;
- control in: keypad digits from RTP telephone-events and SIP INFO, hold and
  unhold from re-INVITEs, and the caller's BYE (a hang-up);
- events out: a phone has no event channel; events reach the store and the
  metrics through the session's sinks, so ``send_event`` drops them;
- close: the agent hangs up with a BYE unless the caller already did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from media.frames import AudioFrame
from media.playout import PlayoutBuffer
from media.sip.dialogs import Dialog, DialogStateError
from media.sip.rtp import RtpSession
from media.sip.sdp import SdpNegotiationError, build_answer, negotiate, parse_sdp
from media.sip.server import IncomingCall, SipRejection
from media.transport import ControlInbox, ControlMessage, Dtmf, HangUp, Hold

log = logging.getLogger(__name__)


class SipTransport:
    """One answered SIP call (see the module docstring)."""

    Callback = Callable[["SipTransport"], None]
    EndCallback = Callable[[str], None]

    kind = "sip"

    def __init__(
        self,
        call: IncomingCall,
        rtp: RtpSession,
        *,
        answer_address: str,
        session_id: int,
        on_confirmed: Callback,
        on_ended: EndCallback,
        echo_cancel: bool = True,
    ) -> None:
        """``on_confirmed`` runs when the caller's ACK arrives (start the call);
        ``on_ended`` when the dialog ends from the caller's side (end the call)."""
        self.call = call
        self.rtp = rtp
        self.echo_cancel = echo_cancel
        """Phone callers on a speakerphone return the agent's voice: the bridge cancels it."""
        self._answer_address = answer_address
        self._session_id = session_id
        self._version = 1
        self._on_confirmed = on_confirmed
        self._on_ended = on_ended
        self._inbox = ControlInbox()
        self._dialog: asyncio.Future[Dialog | None] = asyncio.get_running_loop().create_future()
        self._remote_ended: str | None = None
        self._closed = False
        self.on_hold = False

    # ------------------------------------------------------------ DialogEvents

    def confirmed(self, dialog: Dialog) -> None:
        """The caller's ACK arrived: the call runs."""
        if not self._dialog.done():
            self._dialog.set_result(dialog)
        self._on_confirmed(self)

    def reinvite(self, offer_sdp: str) -> str:
        """A re-INVITE (hold, unhold, a new media address): answer it, tell the session."""
        try:
            offer = parse_sdp(offer_sdp)
            # the media stream keeps its codec: a re-offer must still include it
            negotiated = negotiate(offer, prefer=(self.rtp.codec.name,))
        except SdpNegotiationError as exc:
            raise SipRejection(488, "Not Acceptable Here") from exc
        on_hold = negotiated.on_hold  # sendonly, inactive, or a c=0.0.0.0 hold address
        self.rtp.set_remote(negotiated.remote_address, negotiated.remote_port)
        answer_direction = negotiated.answer_direction
        self.rtp.set_direction(answer_direction)
        if on_hold != self.on_hold:
            self.on_hold = on_hold
            self._inbox.put(Hold(on_hold))
        self._version += 1
        return build_answer(
            negotiated,
            address=self._answer_address,
            port=self.rtp.local_port,
            session_id=self._session_id,
            version=self._version,
            direction=answer_direction,
        )

    def dtmf(self, digit: str, duration_ms: int) -> None:
        """A keypad digit sent as SIP INFO."""
        self._inbox.put(Dtmf(digit, duration_ms))

    def ended(self, cause: str) -> None:
        """The dialog ended from the caller's side (BYE, CANCEL, no ACK, shutdown)."""
        self._remote_ended = cause
        if not self._dialog.done():
            self._dialog.set_result(None)
        self._inbox.put(HangUp())
        self._on_ended(cause)

    # ------------------------------------------------------------ Transport

    async def inbound(self) -> AsyncIterator[AudioFrame]:
        """The caller's decoded audio until the RTP stream ends (closed or silent too long)."""
        async for frame in self.rtp.frames():
            yield frame

    async def control(self) -> AsyncIterator[ControlMessage]:
        """Keypad digits (RTP telephone-events and SIP INFO), hold, and the caller's BYE."""
        pump = asyncio.get_running_loop().create_task(self._pump_digits(), name="sip-digits")
        try:
            async for message in self._inbox:
                yield message
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _pump_digits(self) -> None:
        async for digit in self.rtp.digits():
            self._inbox.put(Dtmf(digit.digit, digit.duration_ms))

    async def play(self, playout: PlayoutBuffer) -> None:
        """Send the agent's voice as paced RTP until the call ends."""
        await self.rtp.send_playout(playout)

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """A phone has no event channel: events reach the store and metrics through sinks."""

    async def close(self, reason: str) -> None:
        """Stop the media and hang up with a BYE unless the caller already did (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._inbox.close()
        with contextlib.suppress(Exception):
            await self.rtp.close()
        if self._remote_ended is not None or not self._dialog.done():
            return
        dialog = self._dialog.result()
        if dialog is not None:
            try:
                await dialog.hangup(reason)
            except Exception as exc:  # a BYE that cannot be delivered ends nothing more
                log.warning(
                    "sip: BYE for %s failed (%s)", self.call.call_id[:8], type(exc).__name__
                )

    async def transfer(self, target_uri: str) -> int:
        """Blind transfer (REFER): the caller's side is asked to call ``target_uri``.

        Returns the REFER's final status (202: accepted; the caller's side then
        ends this dialog with a BYE). ``DialogStateError`` before the ACK or
        after the end.
        """
        if not self._dialog.done():
            raise DialogStateError("the call is not answered yet")
        dialog = self._dialog.result()
        if dialog is None or self._remote_ended is not None:
            raise DialogStateError("the dialog has ended")
        return await dialog.refer(target_uri)

    @property
    def remote_ended(self) -> str | None:
        """Why the caller's side ended the dialog, if it did."""
        return self._remote_ended
