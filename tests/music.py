"""Helpers of the music tests: an in-memory ``AccessTokens`` wired to a platform fake.

``MemoryTokens`` hands out one token per (platform, user) and, on a refused
token, mints the next one and tells the fake it is valid (``issue``), the way
a platform's token endpoint would. The accounts side's real ``AccessTokens``
(``signaling.platform_tokens``, over the store and the loopback OAuth server)
is used in the end-to-end tests; the adapter tests need only this contract.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from agent.platforms.base import NotConnectedError
from tests.vendors.music_catalogue import Song


class MemoryTokens:
    """``agent.platforms.base.AccessTokens`` in memory (see the module docstring)."""

    def __init__(self, first: str, issue: Callable[[str], None] | None = None) -> None:
        self.current = first
        self.issue = issue
        self.refusing = False
        """When True, a refresh is refused: ``NotConnectedError``."""
        self.refreshes = 0
        self.rejected: list[str] = []
        self._serial = itertools.count(2)

    async def access_token(self, platform: str, user_id: str) -> str:
        """The current token."""
        return self.current

    async def refreshed(self, platform: str, user_id: str, rejected: str) -> str:
        """A new token (told to the fake), or ``NotConnectedError`` while ``refusing``."""
        self.rejected.append(rejected)
        if self.refusing:
            raise NotConnectedError(platform)
        self.refreshes += 1
        self.current = f"{platform}-token-{next(self._serial)}"
        if self.issue is not None:
            self.issue(self.current)
        return self.current


def many_songs(n: int) -> tuple[Song, ...]:
    """``n`` distinct songs (for pagination)."""
    return tuple(
        Song(f"Numbered Song {i}", (f"Artist {i % 7}",), f"Album {i % 5}", 180_000 + i)
        for i in range(n)
    )
