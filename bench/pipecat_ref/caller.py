"""The wire benchmark's caller, pointed at the Pipecat reference bot.

The same ``CallerPeer`` (the same clips, sent in real time, and the same
recording of the agent's audio) as ``WireCaller``; only the signaling
differs: one ``POST /api/offer`` with ``{sdp, type}`` answered by
``{sdp, type, pc_id}`` (Pipecat's SmallWebRTC runner), no room, no token.
The bot sends no session events, so a scenario measures it on the audio only
(``has_events`` is False).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

import httpx

from bench.wire.client import CallError, WireCaller

POLL_S = 0.05


class PipecatCaller(WireCaller):
    """A ``WireCaller`` whose call is set up through SmallWebRTC's offer endpoint."""

    has_events: ClassVar[bool] = False

    async def connect(self, within_s: float = 30.0) -> float:
        """Offer, apply the answer, wait until media flows and the bot's pipeline listens.

        Returns the seconds it took. The bot loads its per-call models before it
        answers, and reports the call ``connected`` on ``/health`` once its
        pipeline has seen the caller; only then is the call ready to be asked.
        """
        t0 = time.monotonic()
        r = await self.client.post(
            "/api/offer", json={"sdp": await self.peer.offer(), "type": "offer"}, timeout=within_s
        )
        if r.status_code != 200:
            raise CallError(f"offer refused: {r.status_code} {r.text[:200]}")
        answer: dict[str, Any] = r.json()
        self.call_id = str(answer["pc_id"])
        await self.peer.accept(answer["sdp"], answer["type"])
        deadline = t0 + within_s
        if not await self.wait_until(lambda: self.peer.connected, deadline - time.monotonic()):
            state = self.peer.pc.connectionState
            raise CallError(f"call not connected within {within_s} s ({state})")
        while not await self._listening():
            if time.monotonic() >= deadline:
                raise CallError(f"the bot's pipeline did not start within {within_s} s")
            await asyncio.sleep(POLL_S)
        self.connect_s = time.monotonic() - t0
        return self.connect_s

    async def _listening(self) -> bool:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await self.client.get("/health", timeout=5)
            if r.status_code == 200:
                return self.call_id in r.json().get("connected", [])
        return False

    async def hang_up(self) -> None:
        """Close the peer: the bot's transport sees the caller leave and ends the pipeline."""
        await self.peer.close()
