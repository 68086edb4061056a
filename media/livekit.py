"""A LiveKit room as a call transport: the caller is a participant, the agent another.

``LiveKitTransport`` adapts one caller in a connected ``rtc.Room`` to the call
bridge (``media.transport.Transport``):

- **audio in**: the caller's microphone (from the moment it is subscribed)
  through ``rtc.AudioStream``, which decodes and resamples it to the
  pipeline's 16 kHz mono in 20 ms frames (so the bridge's normaliser
  passes it through). Its queue is bounded at ``INBOUND_QUEUE_FRAMES``
  (1 s); past it the oldest frame is dropped.
- **audio out**: the session's ``PlayoutBuffer`` paced by the one pacer
  (``PlayoutBuffer.frames``) into an ``rtc.AudioSource`` behind a published
  ``LocalAudioTrack``; only frames that carry speech are captured (the source
  sends silence by itself). The source's own queue is bounded at
  ``SOURCE_QUEUE_MS``; barge-in clears it at once (``clear_queue``), so the
  caller stops hearing the agent within a frame or two.
- **control in**: typed messages on the ``lk.chat`` text stream become text
  turns; ``sip_dtmf_received`` (a phone caller's keypad, through LiveKit SIP)
  becomes ``Dtmf``. Only the caller's own messages count.
- **events out**: the session's events follow LiveKit's agent conventions
  (``media.livekit_conventions``): the ``lk.agent.state`` attribute,
  transcripts on ``lk.transcription``, our JSON on ``parley.events``. A
  text stream that cannot be sent is dropped and counted
  (``dropped_events``), as on the WebRTC data channel: media goes on.
- **gone**: the caller leaving (``participant_disconnected``) or the room
  disconnecting ends ``inbound()`` and ``play()``; ``gone_reason`` says which.
- **close**: stops the media and unpublishes the agent's track; leaving the
  room is the job's (the worker disconnects when the call is over).

``LiveKitAudio`` is the audio half alone (stream in, source out), which runs
without a room on a local ``AudioSource -> LocalAudioTrack -> AudioStream``
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
from livekit import rtc

from media.errors import AudioFormatError
from media.frames import FRAME_MS, PIPELINE_RATE, AudioFrame
from media.livekit_conventions import (
    ATTRIBUTE_AGENT_STATE,
    TOPIC_CHAT,
    ClearAudio,
    LiveKitConventions,
    Outgoing,
    Publish,
    SetState,
)
from media.playout import PlayoutBuffer
from media.transport import (
    MAX_CONTROL_BYTES,
    ControlInbox,
    ControlMessage,
    Dtmf,
    InvalidControl,
    TextInput,
)

log = logging.getLogger(__name__)

INBOUND_QUEUE_FRAMES = 1000 // FRAME_MS
"""Caller frames the ``AudioStream`` holds (1 s); past it the oldest is dropped."""
SOURCE_QUEUE_MS = 200
"""Agent audio the ``AudioSource`` may hold ahead of the network (cleared on barge-in)."""
AGENT_TRACK_NAME = "parley-agent"
"""Name of the agent's published audio track."""
MAX_CHAT_READERS = 4
"""``lk.chat`` messages read at once; more are refused (the caller is flooding)."""


class LiveKitAudio:
    """One call's audio: the caller's ``AudioStream`` in, the agent's ``AudioSource`` out.

    ``source`` plays the agent at the session playout's rate. The caller's
    stream (16 kHz mono: ``caller_stream`` makes one) is attached when the
    caller's microphone is subscribed; ``frames()`` waits for it.
    """

    def __init__(self, source: rtc.AudioSource, stream: rtc.AudioStream | None = None) -> None:
        self._source = source
        self._stream: asyncio.Future[rtc.AudioStream | None] = (
            asyncio.get_running_loop().create_future()
        )
        if stream is not None:
            self._stream.set_result(stream)
        self.cleared = 0
        """Times the source's queue was cleared (barge-in)."""
        self.captured_frames = 0
        """Agent frames handed to the source."""
        self._closed = False

    @property
    def source(self) -> rtc.AudioSource:
        """The agent's audio source (publish it with ``rtc.LocalAudioTrack``)."""
        return self._source

    @property
    def attached(self) -> bool:
        """Whether the caller's stream is attached (or the input already ended)."""
        return self._stream.done()

    def attach(self, stream: rtc.AudioStream) -> None:
        """Take the caller's stream; ``frames()`` starts delivering it."""
        if self._stream.done():
            raise RuntimeError("the caller's stream is already attached")
        self._stream.set_result(stream)

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """The caller's audio as ``AudioFrame``s (once attached) until the stream ends."""
        stream = await self._stream
        if stream is None:
            return
        position = 0
        async for event in stream:
            frame = event.frame
            pcm = np.frombuffer(frame.data, dtype=np.int16).copy()
            yield AudioFrame(
                pcm, frame.sample_rate, frame.num_channels, position / frame.sample_rate
            )
            position += frame.samples_per_channel

    async def play(self, playout: PlayoutBuffer) -> None:
        """Capture the playout's paced speech frames into the source, forever."""
        rate = self._source.sample_rate
        if playout.sample_rate != rate or self._source.num_channels != 1:
            raise AudioFormatError(
                f"the source plays {rate} Hz with {self._source.num_channels} channels, "
                f"the playout buffer is {playout.sample_rate} Hz mono"
            )
        async for frame, speech in playout.frames():
            if not speech or self._closed:
                continue
            samples = frame.samples
            await self._source.capture_frame(
                rtc.AudioFrame(samples.tobytes(), rate, 1, samples.size)
            )
            self.captured_frames += 1

    def clear(self) -> None:
        """Drop the agent audio queued in the source (barge-in)."""
        if not self._closed:
            self._source.clear_queue()
            self.cleared += 1

    async def close_input(self) -> None:
        """End the caller's stream: ``frames()`` returns (at once if none was attached)."""
        if not self._stream.done():
            self._stream.set_result(None)
            return
        stream = self._stream.result()
        if stream is not None:
            await stream.aclose()

    async def aclose(self) -> None:
        """Close the stream and the source (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # the stream may already be closed
            await self.close_input()
        await self._source.aclose()


def caller_stream(track: rtc.Track) -> rtc.AudioStream:
    """The caller's microphone track (a browser's or a SIP participant's) as 16 kHz mono
    in 20 ms frames, in a queue bounded at ``INBOUND_QUEUE_FRAMES`` (oldest dropped)."""
    return rtc.AudioStream.from_track(
        track=track,
        sample_rate=PIPELINE_RATE,
        num_channels=1,
        frame_size_ms=FRAME_MS,
        capacity=INBOUND_QUEUE_FRAMES,
    )


class LiveKitTransport:
    """One caller in a connected LiveKit room (see the module docstring).

    Build it with ``await LiveKitTransport.open(room, caller, output_rate)``,
    which publishes the agent's track and opens the caller's stream.
    """

    kind = "livekit"

    def __init__(
        self,
        room: rtc.Room,
        caller: rtc.RemoteParticipant,
        audio: LiveKitAudio,
        *,
        agent_track: str | None = None,
    ) -> None:
        self._room = room
        self.caller = caller.identity
        self.audio = audio
        self.agent_track = agent_track
        self.conventions = LiveKitConventions(self.caller, agent_track=agent_track)
        self._inbox = ControlInbox()
        self._gone = asyncio.Event()
        self.gone_reason: str | None = None
        """Why the caller's side ended (``"caller left"``, ``"room disconnected"``)."""
        self.dropped_events = 0
        """Text streams and attribute updates that could not be sent."""
        self._readers: set[asyncio.Task[None]] = set()
        self._ending: asyncio.Task[None] | None = None
        self._closed = False
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("disconnected", self._on_disconnected)
        room.on("sip_dtmf_received", self._on_dtmf)
        room.on("track_subscribed", self._on_track_subscribed)
        room.register_text_stream_handler(TOPIC_CHAT, self._on_chat)
        for publication in caller.track_publications.values():
            if publication.track is not None:
                self._on_track_subscribed(publication.track, publication, caller)

    @classmethod
    async def open(
        cls, room: rtc.Room, caller: rtc.RemoteParticipant, output_rate: int
    ) -> LiveKitTransport:
        """Publish the agent's track at ``output_rate`` and open the caller's stream."""
        source = rtc.AudioSource(output_rate, 1, queue_size_ms=SOURCE_QUEUE_MS)
        track = rtc.LocalAudioTrack.create_audio_track(AGENT_TRACK_NAME, source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            publication = await room.local_participant.publish_track(track, options)
        except BaseException:
            await source.aclose()
            raise
        audio = LiveKitAudio(source)
        transport = cls(room, caller, audio, agent_track=publication.sid)
        await transport._apply(SetState("listening"))
        return transport

    # ------------------------------------------------------------ room callbacks

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """The caller's microphone: its audio goes in, its sid names their transcripts."""
        if (
            participant.identity != self.caller
            or publication.source != rtc.TrackSource.SOURCE_MICROPHONE
            or track.kind != rtc.TrackKind.KIND_AUDIO
        ):
            return
        self.conventions.set_tracks(caller_track=publication.sid, agent_track=None)
        if self.audio.attached:
            log.info("livekit: %s published another microphone; keeping the first", self.caller)
            return
        self.audio.attach(caller_stream(track))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self.caller:
            self._caller_gone("caller left")

    def _on_disconnected(self, *_: object) -> None:
        self._caller_gone("room disconnected")

    def _on_dtmf(self, dtmf: rtc.SipDTMF) -> None:
        participant = dtmf.participant
        if participant is None or participant.identity == self.caller:
            self._inbox.put(Dtmf(dtmf.digit))

    def _on_chat(self, reader: rtc.TextStreamReader, participant_identity: str) -> None:
        if participant_identity != self.caller or self._closed:
            return
        if len(self._readers) >= MAX_CHAT_READERS:
            self._inbox.put(InvalidControl("too many chat messages at once"))
            return
        task = asyncio.get_running_loop().create_task(self._read_chat(reader), name="lk.chat")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read_chat(self, reader: rtc.TextStreamReader) -> None:
        size = reader.info.size
        if size is not None and size > MAX_CONTROL_BYTES:
            self._inbox.put(InvalidControl(f"chat message over {MAX_CONTROL_BYTES // 1024} KiB"))
            return
        parts: list[str] = []
        length = 0
        try:
            async for chunk in reader:
                length += len(chunk.encode("utf-8", "surrogatepass"))
                if length > MAX_CONTROL_BYTES:
                    self._inbox.put(
                        InvalidControl(f"chat message over {MAX_CONTROL_BYTES // 1024} KiB")
                    )
                    return
                parts.append(chunk)
        except Exception as exc:  # the stream broke off (rtc.StreamError): say so, go on
            log.info("livekit: a chat message broke off (%s)", type(exc).__name__)
            self._inbox.put(InvalidControl("the chat message was not received whole"))
            return
        self._inbox.put(TextInput("".join(parts)))

    def _caller_gone(self, reason: str) -> None:
        if self._gone.is_set():
            return
        self.gone_reason = reason
        self._gone.set()
        self._inbox.close()
        # the caller's stream ends; inbound() returns (reaped in close())
        self._ending = asyncio.get_running_loop().create_task(
            self.audio.close_input(), name="livekit:caller-gone"
        )

    # ------------------------------------------------------------ Transport

    async def inbound(self) -> AsyncIterator[AudioFrame]:
        """The caller's microphone at 16 kHz mono until the caller leaves."""
        async for frame in self.audio.frames():
            yield frame

    async def control(self) -> AsyncIterator[ControlMessage]:
        """Typed ``lk.chat`` messages and SIP keypad digits of the caller."""
        async for message in self._inbox:
            yield message

    async def play(self, playout: PlayoutBuffer) -> None:
        """Play the agent into the published track until the caller is gone."""
        player = asyncio.get_running_loop().create_task(
            self.audio.play(playout), name="livekit:play"
        )
        gone = asyncio.get_running_loop().create_task(self._gone.wait(), name="livekit:gone")
        try:
            await asyncio.wait([player, gone], return_when=asyncio.FIRST_COMPLETED)
            if player.done():
                player.result()  # a failure of the source is the call's failure
        finally:
            for task in (player, gone):
                task.cancel()
            await asyncio.gather(player, gone, return_exceptions=True)

    async def send_event(self, event: Mapping[str, Any]) -> None:
        """Apply LiveKit's conventions to one session event (see ``media.livekit_conventions``)."""
        for action in self.conventions.map(event):
            await self._apply(action)

    async def close(self, reason: str) -> None:
        """Stop the media, stop listening to the room, unpublish the agent (idempotent)."""
        if self._closed:
            return
        self._closed = True
        log.debug("livekit call with %s closing: %s", self.caller, reason)
        self._inbox.close()
        with contextlib.suppress(Exception):  # a room that is gone has no listeners
            self._room.off("participant_disconnected", self._on_participant_disconnected)
            self._room.off("disconnected", self._on_disconnected)
            self._room.off("sip_dtmf_received", self._on_dtmf)
            self._room.off("track_subscribed", self._on_track_subscribed)
        with contextlib.suppress(Exception):
            self._room.unregister_text_stream_handler(TOPIC_CHAT)
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        pending = [*readers, *([self._ending] if self._ending is not None else [])]
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.audio.aclose()
        if self.agent_track is not None and self._room.isconnected():
            with contextlib.suppress(Exception):
                await self._room.local_participant.unpublish_track(self.agent_track)

    async def _apply(self, action: Outgoing) -> None:
        if isinstance(action, ClearAudio):
            self.audio.clear()
            return
        if self._closed or not self._room.isconnected():
            return
        participant = self._room.local_participant
        try:
            if isinstance(action, SetState):
                await participant.set_attributes({ATTRIBUTE_AGENT_STATE: action.state})
            else:
                await self._publish(participant, action)
        except Exception as exc:  # a text stream is best effort: the call goes on
            self.dropped_events += 1
            log.warning("livekit: an event was not delivered (%s)", type(exc).__name__)

    async def _publish(self, participant: rtc.LocalParticipant, action: Publish) -> None:
        destinations = [self.caller] if action.to_caller_only else None
        if action.sender is None:
            await participant.send_text(
                action.text,
                topic=action.topic,
                attributes=action.attributes,
                destination_identities=destinations,
            )
            return
        # on someone's behalf (the caller's transcript): only a stream can say so
        writer = await participant.stream_text(
            topic=action.topic,
            attributes=action.attributes,
            sender_identity=action.sender,
            destination_identities=destinations,
        )
        await writer.write(action.text)
        await writer.aclose()
