"""The FastAPI application: app factory, lifespan, error mapping and the room/call routes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from agent.config import AgentConfig
from agent.errors import AgentError, ProviderError
from agent.phrase_cache import cached_tts
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from media.errors import AudioFormatError
from signaling.admission import RETRY_AFTER_S, AdmissionError, authorize
from signaling.bodylimit import BodyLimitMiddleware
from signaling.calls import CallLimitError, CallManager
from signaling.metrics import ServerMetrics, breaker_states
from signaling.rooms import Room, RoomRegistry
from signaling.settings import ServerSettings
from signaling.sip import start_sip
from signaling.state import ApiError, AppState, State
from signaling.textchat import TextChats
from signaling.tokens import TokenError, TokenService, bearer
from signaling.webrtc import SdpError, answer_offer
from store.settings import StoreSettings
from store.store import Store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


class RoomIn(BaseModel):
    """Body of ``POST /v1/rooms``."""

    name: str | None = Field(None, max_length=200)


class SdpIn(BaseModel):
    """A JSON SDP offer.

    ``session_id`` (with its token in the ``X-Session-Token`` header) continues a session.
    """

    sdp: str = Field(..., max_length=64 * 1024)
    type: str
    session_id: str | None = Field(None, max_length=64)


def _room_out(
    st: AppState, room: Room, token: str | None = None, exp: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": room.id,
        "name": room.name,
        "created_at": room.created_at,
        "calls": [c.describe() for c in st.calls.calls(room.id)],
        "ice_servers": [s.model_dump(exclude_none=True) for s in st.settings.ice_servers],
    }
    if token is not None:
        out["token"] = token
        out["token_expires_at"] = exp
    return out


def _room_or_404(st: AppState, room_id: str) -> Room:
    room = st.rooms.get(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", "no such room")
    return room


def create_app(
    settings: ServerSettings | None = None,
    models: AgentModels | None = None,
    store_settings: StoreSettings | None = None,
) -> FastAPI:
    """Build the application.

    ``models`` may be passed in to share already-loaded models; the store's
    backends come from ``store_settings`` (default: ``DATABASE_URL`` /
    ``REDIS_URL`` from the environment, else SQLite + in-process cache).
    """
    settings = settings or ServerSettings()
    config = AgentConfig.load(settings.agent_config)
    prices = PriceTable.load(settings.prices)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = models is None
        store = await Store.open(store_settings or StoreSettings())
        loaded: AgentModels = (
            models if models is not None else await asyncio.to_thread(AgentModels.load, config)
        )
        # Calls speak through the phrase cache (greetings and fixed phrases come back at once).
        call_models = dataclasses.replace(loaded, tts=cached_tts(loaded.tts, store.phrases))
        metrics = ServerMetrics(prices)
        metrics.watch_store(store.stats)
        if loaded.fallback_stats is not None:
            metrics.watch_fallback(loaded.fallback_stats, lambda: breaker_states(loaded))
        calls = CallManager(
            call_models,
            config,
            max_calls=settings.max_calls,
            idle_timeout_s=settings.idle_timeout_s,
            store=store,
            sinks=[metrics.observe],
            prices=prices,
        )
        app.state.parley = AppState(
            settings=settings,
            config=config,
            models=loaded,
            tokens=TokenService.from_settings(
                settings.jwt_secret, store.settings.data_dir, settings.token_ttl_s
            ),
            rooms=RoomRegistry(),
            calls=calls,
            metrics=metrics,
            chats=TextChats(config, loaded, store),
            store=store,
            started_at=time.time(),
        )
        sip = await start_sip(app.state.parley)
        app.state.parley.sip = sip[0] if sip is not None else None
        log.info("parley ready: models loaded in %s s", loaded.load_seconds)
        try:
            yield
        finally:
            if sip is not None:
                await sip[0].aclose()  # BYE to every phone caller first
            await calls.shutdown()
            await store.close()
            if own:
                await loaded.aclose()

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        description="Signaling API of a real-time voice agent server.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    _install_routes(app)
    from signaling.sessions_api import router as sessions_router
    from signaling.sip import router as sip_router
    from signaling.voice_api import router as voice_router
    from signaling.ws import router as ws_router

    app.include_router(sessions_router)
    app.include_router(sip_router)
    app.include_router(voice_router)
    app.include_router(ws_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def err(status: int, code: str, detail: str) -> JSONResponse:
        return JSONResponse({"error": code, "detail": detail}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return err(exc.status, exc.code, exc.detail)

    @app.exception_handler(TokenError)
    async def token_error(_: Request, exc: TokenError) -> JSONResponse:
        code = "unauthorized" if exc.status == 401 else "forbidden"
        resp = err(exc.status, code, str(exc))
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(AdmissionError)
    async def admission_error(_: Request, exc: AdmissionError) -> JSONResponse:
        resp = err(exc.status, exc.code, str(exc))
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        if exc.retryable:
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    @app.exception_handler(SdpError)
    async def sdp_error(_: Request, exc: SdpError) -> JSONResponse:
        return err(400, "bad_sdp", str(exc))

    @app.exception_handler(CallLimitError)
    async def call_limit(_: Request, exc: CallLimitError) -> JSONResponse:
        resp = err(503, "too_many_calls", str(exc))
        resp.headers["Retry-After"] = "5"
        return resp

    @app.exception_handler(AudioFormatError)
    async def audio_error(_: Request, exc: AudioFormatError) -> JSONResponse:
        return err(415, "unsupported_media", str(exc))

    @app.exception_handler(ProviderError)
    async def provider_error(_: Request, exc: ProviderError) -> JSONResponse:
        return err(503 if exc.retryable else 502, "provider_error", str(exc))

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(ConnectionError)  # asyncpg's own, raised while connecting
    async def store_error(_: Request, exc: Exception) -> JSONResponse:
        log.warning("store unavailable: %s", type(exc).__name__)
        resp = err(503, "store_unavailable", "the session store is unavailable; retry later")
        resp.headers["Retry-After"] = "5"
        return resp

    @app.exception_handler(AgentError)
    async def agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return err(500, "agent_error", str(exc))


def _install_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    async def health(st: State) -> dict[str, Any]:
        """Liveness and readiness: whether the models are loaded."""
        return {
            "status": "ok",
            "models_loaded": True,
            "models": {k: v for k, v in st.models.load_seconds.items()},
            "providers": {
                "chains": st.models.chains,
                "circuits": {
                    f"{stage}/{name}": state.value
                    for (stage, name), state in breaker_states(st.models).items()
                },
            },
            "active_calls": st.calls.active,
            "max_calls": st.calls.max_calls,
            "store": {
                **st.store.describe(),
                **{f"{k}_ok": v for k, v in (await st.store.healthy()).items()},
            },
            "store_pending_writes": st.store.writer.pending,
            "store_stats": st.store.stats(),
            "uptime_s": round(time.time() - st.started_at, 1),
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics(st: State) -> Response:
        st.metrics.active_calls.set(st.calls.active)
        return Response(st.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/ice-servers")
    async def ice_servers(st: State) -> dict[str, Any]:
        """STUN/TURN servers for clients (empty: loopback and LAN need none)."""
        return {"ice_servers": [s.model_dump(exclude_none=True) for s in st.settings.ice_servers]}

    @app.post("/v1/rooms", status_code=201)
    async def create_room(st: State, body: RoomIn | None = None) -> dict[str, Any]:
        """Create a room; returns its id and a join token scoped to it."""
        room = st.rooms.create(body.name if body else None)
        token, exp = st.tokens.mint(room.id)
        return _room_out(st, room, token, exp)

    @app.get("/v1/rooms/{room_id}")
    async def get_room(room_id: str, st: State) -> dict[str, Any]:
        """A room and its live calls."""
        return _room_out(st, _room_or_404(st, room_id))

    @app.delete("/v1/rooms/{room_id}")
    async def delete_room(
        room_id: str, st: State, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Delete a room and end its calls (needs the room's token)."""
        _room_or_404(st, room_id)
        st.tokens.verify(bearer(authorization), room_id)
        ended = await st.calls.end_room(room_id)
        st.rooms.delete(room_id)
        return {"id": room_id, "deleted": True, "calls_ended": ended}

    @app.post("/v1/rooms/{room_id}/offer")
    async def offer(
        room_id: str,
        request: Request,
        st: State,
        authorization: Annotated[str | None, Header()] = None,
        x_session_token: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Answer a WebRTC offer (JSON ``{sdp, type}`` or WHIP-style ``application/sdp``).

        A call continues an existing session when ``session_id`` is given (in
        the JSON body or the query) with that session's token in
        ``X-Session-Token``; otherwise it starts a new session, whose id and
        token come back with the answer.
        """
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await request.body()
        session_id = request.query_params.get("session_id")
        if ctype == "application/sdp":
            sdp, kind, whip = raw.decode("utf-8", "replace"), "offer", True
        elif ctype == "application/json":
            try:
                body = SdpIn.model_validate_json(raw)
            except ValueError as exc:
                raise ApiError(400, "bad_sdp", "body must be JSON {sdp, type}") from exc
            sdp, kind, whip = body.sdp, body.type, False
            session_id = body.session_id or session_id
        else:
            raise ApiError(415, "unsupported_media", "send application/json or application/sdp")
        grant = authorize(
            st,
            room_id,
            bearer(authorization),
            session_id=session_id,
            session_token=x_session_token,
        )
        admitted, answer = await answer_offer(st, grant, sdp, kind)
        call = admitted.call
        headers = {"X-Call-Id": call.id, "X-Session-Id": call.session.id}
        if admitted.session_token is not None:
            headers["X-Session-Token"] = admitted.session_token
        if whip:
            headers["Location"] = f"/v1/rooms/{room_id}/calls/{call.id}"
            return Response(answer.sdp, 201, headers=headers, media_type="application/sdp")
        return JSONResponse(
            {
                "session_token": admitted.session_token,
                "sdp": answer.sdp,
                "type": answer.type,
                "call_id": call.id,
                "session_id": call.session.id,
            },
            headers=headers,
        )

    @app.delete("/v1/rooms/{room_id}/calls/{call_id}")
    async def hang_up(
        room_id: str, call_id: str, st: State, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """End one call (WHIP-style resource deletion)."""
        st.tokens.verify(bearer(authorization), room_id)
        call = st.calls.get(call_id)
        if call is None or call.room_id != room_id:
            raise ApiError(404, "call_not_found", "no such call in this room")
        await st.calls.end(call, "hung up")
        return {"id": call_id, "ended": True}
