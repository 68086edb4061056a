"""Rooms on LiveKit: the caller's token that joins a room and dispatches our agent.

``POST /v1/rooms`` with ``"media": "livekit"`` creates our room (the store's
row: join token, calls, deletion) and names the LiveKit room after it. The
caller gets a LiveKit access token for that room alone (``VideoGrants``:
join, publish, subscribe, publish data) whose ``RoomConfiguration`` carries a
``RoomAgentDispatch`` for our worker's agent name: when the caller's join
creates the room, LiveKit dispatches a job to one of our workers, which joins
as the agent. Nothing is sent to LiveKit here: the SFU creates the room on
that first join (which is also when token dispatch takes effect).
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass
from typing import Any

from livekit import api

from signaling.livekit_settings import LiveKitSettings


@dataclass(frozen=True, slots=True)
class CallerToken:
    """A caller's LiveKit access token and what it grants."""

    url: str
    room: str
    identity: str
    token: str
    expires_at: int
    agent_name: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready (the ``livekit`` object of a room)."""
        return {
            "url": self.url,
            "room": self.room,
            "identity": self.identity,
            "token": self.token,
            "token_expires_at": self.expires_at,
            "agent_name": self.agent_name,
        }


class LiveKitRooms:
    """Mints caller tokens for LiveKit rooms (``settings`` must be configured)."""

    def __init__(self, settings: LiveKitSettings) -> None:
        self._url, self._key, self._secret = settings.credentials()
        self.agent_name = settings.agent_name
        self._ttl_s = settings.token_ttl_s

    @property
    def url(self) -> str:
        """The LiveKit server callers connect to."""
        return self._url

    def caller_token(self, room: str, identity: str | None = None) -> CallerToken:
        """A token that joins ``room`` as ``identity`` (default: a fresh ``caller-...``) and
        dispatches the agent when the join creates the room."""
        identity = identity or "caller-" + secrets.token_urlsafe(8)
        dispatch = api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=self.agent_name)])
        grants = api.VideoGrants(
            room_join=True,
            room=room,
            can_publish=True,
            can_subscribe=True,
            can_publish_data=True,
        )
        token = (
            api.AccessToken(self._key, self._secret)
            .with_identity(identity)
            .with_grants(grants)
            .with_room_config(dispatch)
            .with_ttl(dt.timedelta(seconds=self._ttl_s))
            .to_jwt()
        )
        return CallerToken(
            url=self._url,
            room=room,
            identity=identity,
            token=token,
            expires_at=int(time.time()) + self._ttl_s,
            agent_name=self.agent_name,
        )
