"""LiveKit's agent conventions: what a session event becomes in a LiveKit room.

LiveKit's own front-ends (components-js ``useVoiceAssistant``,
``useTranscriptions``, the agents playground, the telephony stack) read an
agent through a few room conventions, which livekit-agents' ``RoomIO``
implements (``livekit/agents/types.py``, ``voice/room_io``). This module maps
the session's JSON events (``agent.events``, as the call bridge hands them to
every transport) onto them, without touching a room: ``LiveKitConventions``
turns one event into the ``Outgoing`` actions the transport then performs.

- ``lk.agent.state``: the agent participant's attribute, ``listening`` /
  ``thinking`` / ``speaking`` (``state`` events; ``closed`` is not a LiveKit
  state and sets nothing).
- ``lk.transcription``: a text stream per transcript *segment*, with the
  attributes ``lk.segment_id``, ``lk.transcription_final`` (``"true"`` /
  ``"false"``) and ``lk.transcribed_track_id`` (the track the words were
  heard on). Segments are sent whole (not as deltas): each update carries
  the segment's full text so far and replaces the previous one with the same
  segment id, as livekit-agents' non-delta transcription output does. The
  caller's words are sent on the caller's behalf (``sender``: the caller's
  identity, their microphone track); the agent's are its own, on its track.
  The agent's interim text follows the LLM (at most one update every
  ``AGENT_INTERIM_S``); its final text is what the caller heard (cut short
  on barge-in).
- ``parley.events``: every session event as our JSON, for clients that want
  the full picture (metrics, errors, DTMF echoes).
- barge-in: an ``interruption`` event that pauses or confirms tells the
  transport to drop the audio already queued in its ``rtc.AudioSource``.

Transcript text never goes to the logs.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ATTRIBUTE_AGENT_STATE = "lk.agent.state"
ATTRIBUTE_SEGMENT_ID = "lk.segment_id"
ATTRIBUTE_TRACK_ID = "lk.transcribed_track_id"
ATTRIBUTE_FINAL = "lk.transcription_final"
TOPIC_TRANSCRIPTION = "lk.transcription"
TOPIC_CHAT = "lk.chat"
TOPIC_EVENTS = "parley.events"
"""Our JSON session events (the same dicts the WebSocket and data channel carry)."""

AGENT_STATES = frozenset({"listening", "thinking", "speaking"})
"""Session states that are LiveKit agent states (``closed`` is not)."""
OPEN_SEGMENTS = 16
"""Segments remembered per side; past it the oldest is forgotten (a turn whose speech was
discarded never gets a final transcript)."""
AGENT_INTERIM_S = 0.25
"""Shortest interval between two interim updates of the agent's transcript."""
BARGE_IN_PHASES = frozenset({"paused", "confirmed"})
"""Interruption phases after which the audio queued for the caller must go."""


@dataclass(frozen=True, slots=True)
class SetState:
    """Set the agent participant's ``lk.agent.state`` attribute."""

    state: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Send ``text`` on a text stream ``topic`` with ``attributes``.

    ``sender`` is the identity the stream is sent on behalf of (None: the
    agent itself); ``to_caller_only`` limits it to the caller.
    """

    topic: str
    text: str
    attributes: dict[str, str] = field(default_factory=dict)
    sender: str | None = None
    to_caller_only: bool = False


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Drop the agent audio queued in the transport (barge-in)."""


Outgoing = SetState | Publish | ClearAudio
"""What one session event asks of the room."""


def new_segment_id() -> str:
    """A transcript segment id in LiveKit's style (``SG_`` and a short random id)."""
    return "SG_" + secrets.token_hex(6)


class LiveKitConventions:
    """Maps one call's session events to LiveKit room actions (see the module docstring).

    ``caller`` is the caller's identity; ``caller_track`` and ``agent_track``
    are the track sids transcripts refer to (None until known; ``set_tracks``
    updates them). One instance per call: it remembers the open segments.
    """

    def __init__(
        self,
        caller: str,
        *,
        caller_track: str | None = None,
        agent_track: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.caller = caller
        self.caller_track = caller_track
        self.agent_track = agent_track
        self._clock = clock
        self._user_segments: dict[str, str] = {}
        """Segment id of each caller turn whose transcript is not final yet."""
        self._agent_segments: dict[str, _AgentSegment] = {}
        """The agent's reply text so far, by turn, until the reply is over."""

    def set_tracks(self, *, caller_track: str | None, agent_track: str | None) -> None:
        """The caller's microphone and the agent's published track, once known."""
        if caller_track is not None:
            self.caller_track = caller_track
        if agent_track is not None:
            self.agent_track = agent_track

    def map(self, event: Mapping[str, Any]) -> list[Outgoing]:
        """The actions one session event asks for (our JSON event always comes first)."""
        out: list[Outgoing] = [
            Publish(TOPIC_EVENTS, json.dumps(event, separators=(",", ":")), to_caller_only=True)
        ]
        kind = event.get("type")
        if kind == "state":
            state = event.get("state")
            if isinstance(state, str) and state in AGENT_STATES:
                out.append(SetState(state))
        elif kind == "transcript":
            out.extend(self._user_transcript(event))
        elif kind == "reply_delta":
            out.extend(self._agent_delta(event))
        elif kind == "reply":
            out.extend(self._agent_final(event))
        elif kind == "interruption" and event.get("phase") in BARGE_IN_PHASES:
            out.append(ClearAudio())
        return out

    # ------------------------------------------------------------ the caller's words

    def _user_transcript(self, event: Mapping[str, Any]) -> list[Outgoing]:
        turn, text = str(event.get("turn_id", "")), str(event.get("text", ""))
        final = bool(event.get("final"))
        segment = self._user_segments.pop(turn, None) or new_segment_id()
        if not final:
            self._user_segments[turn] = segment
            _trim(self._user_segments)
        if not text.strip() and not final:
            return []
        attributes = {ATTRIBUTE_SEGMENT_ID: segment, ATTRIBUTE_FINAL: _flag(final)}
        if self.caller_track:
            attributes[ATTRIBUTE_TRACK_ID] = self.caller_track
        return [Publish(TOPIC_TRANSCRIPTION, text, attributes, sender=self.caller)]

    # ------------------------------------------------------------ the agent's words

    def _agent_delta(self, event: Mapping[str, Any]) -> list[Outgoing]:
        turn = str(event.get("turn_id", ""))
        segment = self._agent_segments.get(turn)
        if segment is None:
            segment = self._agent_segments[turn] = _AgentSegment(new_segment_id())
            _trim(self._agent_segments)
        segment.text += str(event.get("text", ""))
        now = self._clock()
        if not segment.text.strip() or now - segment.sent_at < AGENT_INTERIM_S:
            return []
        segment.sent_at = now
        return [self._agent_publish(segment.id, segment.text, final=False)]

    def _agent_final(self, event: Mapping[str, Any]) -> list[Outgoing]:
        turn = str(event.get("turn_id", ""))
        segment = self._agent_segments.pop(turn, None)
        heard = str(event.get("heard_text", ""))
        if segment is None and not heard.strip():
            return []  # nothing was said or shown
        segment_id = segment.id if segment is not None else new_segment_id()
        return [self._agent_publish(segment_id, heard, final=True)]

    def _agent_publish(self, segment_id: str, text: str, *, final: bool) -> Publish:
        attributes = {ATTRIBUTE_SEGMENT_ID: segment_id, ATTRIBUTE_FINAL: _flag(final)}
        if self.agent_track:
            attributes[ATTRIBUTE_TRACK_ID] = self.agent_track
        return Publish(TOPIC_TRANSCRIPTION, text, attributes)


@dataclass(slots=True)
class _AgentSegment:
    id: str
    text: str = ""
    sent_at: float = float("-inf")


def _trim(segments: dict[str, Any]) -> None:
    """Forget the oldest open segments past ``OPEN_SEGMENTS`` (dicts keep insertion order)."""
    while len(segments) > OPEN_SEGMENTS:
        del segments[next(iter(segments))]


def _flag(value: bool) -> str:
    return "true" if value else "false"
