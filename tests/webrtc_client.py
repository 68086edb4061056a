"""Calling the agent over WebRTC in tests: the project's caller peer plus the HTTP offer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from media.caller import CallerPeer
from media.frames import PCM, PIPELINE_RATE


def speaking(pcm16k: PCM | None = None) -> CallerPeer:
    """A caller peer whose microphone starts with ``pcm16k`` (16 kHz), then silence."""
    peer = CallerPeer()
    if pcm16k is not None:
        peer.track.play(pcm16k, PIPELINE_RATE)
    return peer


async def connect(
    peer: CallerPeer,
    client: httpx.AsyncClient,
    room: dict[str, Any],
    session: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Offer, post to the room, apply the answer; returns the JSON answer.

    ``session`` (its id and token) makes the call continue that session.
    """
    body: dict[str, Any] = {"sdp": await peer.offer(), "type": "offer"}
    headers = {"Authorization": f"Bearer {room['token']}"}
    if session is not None:
        body["session_id"], headers["X-Session-Token"] = session
    r = await client.post(f"/v1/rooms/{room['id']}/offer", json=body, headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    await peer.accept(answer["sdp"], answer["type"])
    return answer


def events(peer: CallerPeer, kind: str) -> list[dict[str, Any]]:
    """Received events of one type, in order."""
    return [e for _, e in peer.of_type(kind)]


async def wait_for(peer: CallerPeer, predicate: Callable[[], bool], within_s: float) -> None:
    """Wait until ``predicate()`` holds; a hang guard fails with the events seen so far."""
    if not await peer.wait_until(predicate, within_s):
        seen = [e.get("type") for _, e in peer.events]
        raise TimeoutError(f"condition not met; events: {seen}")


async def wait_freed(client: httpx.AsyncClient, within_s: float = 10.0) -> bool:
    """Wait until the server carries no call (polling ``/health``); False if it still does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        if (await client.get("/health")).json()["active_calls"] == 0:
            return True
        await asyncio.sleep(0.1)
    return False
