"""Phone keypad digits gathered into the caller's turns (``dtmf`` in the agent YAML).

A phone caller's key presses (RFC 4733 events, or SIP INFO) reach the
session one digit at a time. With ``dtmf.to_llm`` they become a user turn
for the LLM: digits pressed within ``dtmf.collect_ms`` of each other form
one turn ("#" ends it at once; ``collect_ms: 0`` sends every digit on its
own), worded by ``dtmf.template``. Without it, digits are only events.

One timer at most runs (a press restarts it); the session owns it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from agent.config import DtmfConfig

DTMF_DIGITS = frozenset("0123456789*#ABCD")
"""Keys of a phone keypad (RFC 4733 events 0-15)."""

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]
"""Starts a task owned by the caller (``TaskOwner.spawn``)."""


def check_digit(digit: str) -> str:
    """``digit`` if it is a keypad key; else ``ValueError``."""
    if len(digit) != 1 or digit not in DTMF_DIGITS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return digit


class KeypadTurns:
    """Collects key presses into turns and hands each to ``on_turn`` as its text."""

    def __init__(self, settings: DtmfConfig, spawn: Spawn, on_turn: Callable[[str], None]) -> None:
        self._settings = settings
        self._spawn = spawn
        self._on_turn = on_turn
        self._digits = ""
        self._timer: asyncio.Task[None] | None = None

    def press(self, digit: str) -> None:
        """One key pressed (raises ``ValueError`` for anything but a keypad key)."""
        check_digit(digit)
        if not self._settings.to_llm:
            return
        self._digits += digit
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if digit == "#" or self._settings.collect_ms == 0:
            self._flush()
        else:
            self._timer = self._spawn(
                self._flush_after(self._settings.collect_ms / 1000), "dtmf-collect"
            )

    async def _flush_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        digits, self._digits = self._digits, ""
        if digits:
            self._on_turn(self._settings.template.format(digits=digits))
