"""Rooms: the unit a join token grants access to; calls happen in a room."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Room:
    """A room (the agent answers every call placed in it)."""

    id: str
    name: str | None = None
    created_at: float = field(default_factory=time.time)


class RoomRegistry:
    """Rooms of this process, bounded in number (oldest evicted past ``max_rooms``)."""

    def __init__(self, max_rooms: int = 10_000) -> None:
        self._rooms: dict[str, Room] = {}
        self.max_rooms = max_rooms

    def create(self, name: str | None = None) -> Room:
        """A new room with an unguessable id."""
        room = Room("room_" + secrets.token_urlsafe(12), name)
        if len(self._rooms) >= self.max_rooms:
            self._rooms.pop(next(iter(self._rooms)))
        self._rooms[room.id] = room
        return room

    def get(self, room_id: str) -> Room | None:
        """A room by id."""
        return self._rooms.get(room_id)

    def delete(self, room_id: str) -> Room | None:
        """Remove a room; returns it if it existed."""
        return self._rooms.pop(room_id, None)
