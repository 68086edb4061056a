"""What the routes share, and the API's error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from agent.config import AgentConfig
from agent.runtime import AgentModels
from agent.tools import ToolRegistry
from signaling.access import AccessControl
from signaling.calls import CallManager
from signaling.metrics import ServerMetrics
from signaling.ratelimit import RateLimits
from signaling.settings import ServerSettings
from signaling.textchat import TextChats
from signaling.tokens import TokenService
from signaling.worker_metrics import WorkerMetrics
from store.rooms import RoomRepository
from store.store import Store

if TYPE_CHECKING:
    from media.sip.server import SipServer
    from signaling.jobs import JobRunner
    from signaling.livekit_rooms import LiveKitRooms
    from signaling.music import Music
    from signaling.platforms import Platforms


class ApiError(Exception):
    """An error answered with ``status`` and a JSON ``{"error": code, "detail": ...}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class AppState:
    """Settings, models and registries of one app instance."""

    settings: ServerSettings
    config: AgentConfig
    models: AgentModels
    tokens: TokenService
    rooms: RoomRepository
    """Rooms, in the store: every worker sees every room."""
    calls: CallManager
    metrics: ServerMetrics
    chats: TextChats
    store: Store
    started_at: float
    access: AccessControl
    """API keys, scopes and the open (loopback) mode."""
    limits: RateLimits
    """Rate limits per client address and API key."""
    worker_metrics: WorkerMetrics | None = None
    """Every worker's metrics in one scrape (several workers only)."""
    sip: SipServer | None = None
    """The SIP server, when ``PARLEY_SIP_LISTEN`` is not off."""
    jobs: JobRunner | None = None
    """The periodic jobs (memory trim; store purge and retention on worker 0)."""
    livekit: LiveKitRooms | None = None
    """Caller tokens for LiveKit rooms, when ``LIVEKIT_URL`` and its key and secret are set."""
    platforms: Platforms | None = None
    """Music platforms: OAuth clients, users' access tokens, ``on_connected`` hooks."""
    music: Music | None = None
    """Music adapters, the tiered search, the library sync and the music tools."""
    tools: ToolRegistry | None = None
    """The agent's tools (YAML HTTP tools, music tools), as calls and chats offer them."""


def state_of(request: Request) -> AppState:
    """The app state (a FastAPI dependency)."""
    st: AppState = request.app.state.parley
    return st


State = Annotated[AppState, Depends(state_of)]
