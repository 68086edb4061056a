"""The FastAPI application: app factory, lifespan, error mapping and the room/call routes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.config import AgentConfig
from agent.errors import AgentError, InputTooLongError, ProviderError
from agent.http_tools import http_tools
from agent.phrase_cache import cached_tts
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from agent.tools import ToolRegistry
from agent.warmup import warm_up
from media.errors import AudioFormatError
from signaling import allocator
from signaling.access import AccessControl, AccessError, access_summary, guard
from signaling.admission import RETRY_AFTER_S, AdmissionError, authorize
from signaling.bodylimit import BodyLimitMiddleware
from signaling.calls import CallLimitError, CallManager
from signaling.correlation import RequestIdMiddleware, current_request_id
from signaling.jobs import JobRunner, maintenance_jobs
from signaling.ledger import open_ledger
from signaling.library_sync import JOB_NAME as LIBRARY_SYNC_JOB
from signaling.livekit_rooms import LiveKitRooms
from signaling.livekit_settings import LiveKitSettings
from signaling.methods import MethodsMiddleware
from signaling.metrics import ServerMetrics, breaker_states
from signaling.music import Music
from signaling.openapi import error_responses, raw_body
from signaling.platforms import Platforms
from signaling.ratelimit import RateLimitedError, RateLimits
from signaling.sdp_offer import MAX_SDP_BYTES, SdpError, decode_offer, sdp_size_error
from signaling.settings import ServerSettings
from signaling.sip import start_sip
from signaling.state import ApiError, AppState, State
from signaling.textchat import TextChats
from signaling.tokens import TokenError, TokenService, bearer
from signaling.tracing import start_tracing
from signaling.webrtc import answer_offer
from signaling.worker_metrics import WorkerMetrics
from store.rooms import RoomRecord
from store.settings import StoreSettings
from store.store import Store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


class RoomIn(BaseModel):
    """Body of ``POST /v1/rooms``."""

    name: str | None = Field(None, max_length=200)
    media: Literal["local", "livekit"] = Field(
        "local",
        description="``local``: calls reach this server (WebRTC, WebSocket); ``livekit``: the "
        "room lives on LiveKit (``LIVEKIT_URL``), the answer carries a caller token that "
        "dispatches our agent worker.",
    )


class SdpIn(BaseModel):
    """A JSON SDP offer.

    ``session_id`` (with its token in the ``X-Session-Token`` header) continues a session.
    """

    sdp: str = Field(..., max_length=MAX_SDP_BYTES)
    type: str
    session_id: str | None = Field(None, max_length=64)


class AnswerOut(BaseModel):
    """The answer to a JSON offer (a WHIP offer gets the SDP alone, 201 ``application/sdp``)."""

    session_token: str | None = Field(description="The new session's token (null: continued).")
    sdp: str
    type: str
    call_id: str
    session_id: str


_OFFER_BODY = raw_body(
    {
        "application/json": {"schema": SdpIn.model_json_schema()},
        "application/sdp": {"schema": {"type": "string", "maxLength": MAX_SDP_BYTES}},
    },
    description="The caller's SDP offer: JSON ``{sdp, type}``, or the SDP itself (WHIP).",
)


def _json_offer(raw: bytes) -> SdpIn:
    """A JSON offer body (``SdpError`` 413 for an SDP over the limit, ``ApiError`` 400 else)."""
    try:
        return SdpIn.model_validate_json(raw)
    except ValidationError as exc:
        for error in exc.errors():
            if error["type"] == "string_too_long" and tuple(error["loc"]) == ("sdp",):
                size = len(str(error["input"]).encode("utf-8", "surrogatepass"))
                raise sdp_size_error(size) from None
            if error["type"] == "json_invalid":
                raise ApiError(400, "bad_sdp", "the body is not valid JSON") from None
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(
            400, "bad_sdp", f"the body must be JSON {{sdp, type}}: {where}: {first['msg']}"
        ) from None


async def _room_out(
    st: AppState,
    room: RoomRecord,
    token: str | None = None,
    exp: int | None = None,
    *,
    reveal_sessions: bool = False,
) -> dict[str, Any]:
    """A room as the API shows it, with its calls on every worker.

    Calls carry their session ids for admins only.
    """
    calls = await st.calls.describe_room(room.id)
    if not reveal_sessions:
        calls = [{k: v for k, v in c.items() if k != "session_id"} for c in calls]
    out: dict[str, Any] = {
        "id": room.id,
        "name": room.name,
        "created_at": room.created_at.timestamp(),
        "calls": calls,
        "ice_servers": [s.model_dump(exclude_none=True) for s in st.settings.ice_servers],
    }
    if token is not None:
        out["token"] = token
        out["token_expires_at"] = exp
    return out


async def _room_or_404(st: AppState, room_id: str) -> RoomRecord:
    room = await st.rooms.get(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", "no such room")
    return room


async def _room_reader(st: AppState, room_id: str, authorization: str | None) -> bool:
    """Check a credential for a room: its join token, or an admin credential (True).

    401 without one, 403 for another room's token or a key without the admin scope.
    """
    token = bearer(authorization)
    principal = await st.access.identify(token)
    if principal is None:
        st.tokens.verify(token, room_id)
        return False
    if not principal.allows("admin"):
        raise AccessError("the room's join token or an admin key is required", 403)
    return True


async def _reap(task: asyncio.Task[None]) -> None:
    """Cancel an owned task and wait for it to end."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


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
    if settings.malloc_arena_max is not None:  # before the model and executor threads exist
        allocator.limit_arenas(settings.malloc_arena_max)
    config = AgentConfig.load(settings.agent_config)
    prices = PriceTable.load(settings.prices)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each resource's release is pushed as it opens: a step that fails releases what
        # the steps before it opened, and shutdown closes everything in reverse order
        # (jobs, SIP, then the calls, then what the calls use, the store last).
        async with AsyncExitStack() as stack:
            own = models is None
            store = await Store.open(store_settings or StoreSettings())
            stack.push_async_callback(store.close)
            loaded: AgentModels = (
                models if models is not None else await asyncio.to_thread(AgentModels.load, config)
            )
            if own:
                stack.push_async_callback(loaded.aclose)
            if own and settings.warm_up:
                warmed = await warm_up(loaded, config)
                log.info("warmed up in %s s", warmed)
            # Calls speak through the phrase cache (greetings and fixed phrases come back at once).
            call_models = dataclasses.replace(loaded, tts=cached_tts(loaded.tts, store.phrases))
            metrics = ServerMetrics(prices)
            tracing = start_tracing()  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
            if tracing is not None:  # exports the last turns' spans once the calls ended
                stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
            metrics.watch_store(store.stats)
            if loaded.fallback_stats is not None:
                metrics.watch_fallback(loaded.fallback_stats, lambda: breaker_states(loaded))
            # The agent's tools: HTTP tools from its YAML, and the music tools.
            http = http_tools(config.tools)
            for endpoint in http:
                stack.push_async_callback(endpoint.aclose)
            tools = ToolRegistry(endpoint.tool() for endpoint in http)
            tokens = TokenService.from_settings(
                settings.jwt_secret,
                store.settings.data_dir,
                settings.token_ttl_s,
                chain_max_s=settings.session_chain_max_s,
            )
            # Music platforms: OAuth clients and users' access tokens (others attach connect
            # hooks); their adapters, the tiered music search, the library sync and the
            # music tools. Opened before the calls that use them, so closed after them.
            platforms = Platforms.open(settings, store.accounts, tokens)
            stack.push_async_callback(platforms.aclose)
            music = await Music.open(platforms, store, observe=metrics.music_search)
            stack.push_async_callback(music.aclose)
            for tool in music.tools():
                tools.register(tool)
            calls = CallManager(
                call_models,
                config,
                tools=tools,
                max_calls=settings.max_calls,
                idle_timeout_s=settings.idle_timeout_s,
                no_audio_timeout_s=settings.no_audio_timeout_s,
                on_end=lambda call: metrics.call_ended(call.transport, call.end_reason),
                store=store,
                sinks=[metrics.observe] if tracing is None else [metrics.observe, tracing.sink],
                prices=prices,
                ledger=open_ledger(
                    redis_url=store.settings.redis_url,
                    prefix=store.settings.key_prefix,
                    data_dir=store.settings.data_dir,
                    workers=settings.worker_count,
                ),
            )
            stack.push_async_callback(calls.shutdown)
            limits = RateLimits.from_settings(
                settings, redis_url=store.settings.redis_url, prefix=store.settings.key_prefix
            )
            stack.push_async_callback(limits.aclose)
            metrics.watch_rate_limits(limits.stats)
            app.state.parley = AppState(
                settings=settings,
                config=config,
                models=loaded,
                tokens=tokens,
                rooms=store.rooms,
                calls=calls,
                metrics=metrics,
                chats=TextChats(config, loaded, store, tools=tools),
                store=store,
                started_at=time.time(),
                access=AccessControl(settings, store.keys),
                limits=limits,
            )
            livekit_settings = LiveKitSettings()
            if livekit_settings.configured:
                app.state.parley.livekit = LiveKitRooms(livekit_settings)
            app.state.parley.platforms = platforms
            app.state.parley.music = music
            app.state.parley.tools = tools
            # One SIP listener per server: worker 0 holds the port and its calls.
            sip = await start_sip(app.state.parley) if settings.worker_index == 0 else None
            if sip is not None:
                stack.push_async_callback(sip[0].aclose)  # BYE to every phone caller first
            app.state.parley.sip = sip[0] if sip is not None else None
            # Periodic jobs: memory trim in every worker, store purge and retention on worker 0.
            jobs = JobRunner(maintenance_jobs(app.state.parley))
            app.state.parley.jobs = jobs
            jobs.start()
            stack.push_async_callback(jobs.aclose)  # no purge may run against a closing store
            if LIBRARY_SYNC_JOB in jobs.jobs:  # in-process library sync (no Redis)
                music.wake = lambda: jobs.run_soon(LIBRARY_SYNC_JOB)
            if settings.worker_count > 1:
                shared = WorkerMetrics(
                    store.settings.data_dir / "metrics", settings.worker_index, metrics.render
                )
                app.state.parley.worker_metrics = shared
                publisher = asyncio.get_running_loop().create_task(
                    shared.run(), name="metrics:publish"
                )
                stack.push_async_callback(_reap, publisher)
            log.info("parley ready: models loaded in %s s", loaded.load_seconds)
            log.info("%s; rate limits in %s", access_summary(settings), limits.backend)
            yield

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        description="Signaling API of a real-time voice agent server.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # OPTIONS, HEAD and 405 with the path's full Allow list; CORS preflights pass through.
    app.add_middleware(MethodsMiddleware, router=app.router)
    if settings.cors_origins:
        # Outside the body limit, so preflights and its refusals carry the headers too.
        # Without origins there is no middleware and no CORS header: only the server's
        # own page can call the API from a browser.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Session-Token", "X-Request-Id"],
            expose_headers=[
                "Location",
                "Retry-After",
                "X-Call-Id",
                "X-Session-Id",
                "X-Session-Token",
                "X-Voice",
                "X-Request-Id",
            ],
            max_age=600,
        )
    # Outermost of the middleware: refusals and preflights carry an X-Request-Id too.
    app.add_middleware(RequestIdMiddleware)
    _install_error_handlers(app)
    _install_routes(app)
    from signaling.keys_api import router as keys_router
    from signaling.platforms_api import router as platforms_router
    from signaling.search_api import router as search_router
    from signaling.sessions_api import router as sessions_router
    from signaling.sip import router as sip_router
    from signaling.tools_api import router as tools_router
    from signaling.voice_api import router as voice_router
    from signaling.ws import router as ws_router

    app.include_router(keys_router)
    app.include_router(platforms_router)
    app.include_router(search_router)
    app.include_router(tools_router)
    app.include_router(sessions_router)
    app.include_router(sip_router)
    app.include_router(voice_router)
    app.include_router(ws_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def err(status: int, code: str, detail: str) -> JSONResponse:
        return JSONResponse({"error": code, "detail": detail}, status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette answers unhandled exceptions outermost, past RequestIdMiddleware (which
        # leaves the id bound when the app raises): the id is added here. The traceback is
        # still logged by the server; the client gets no detail of it.
        resp = err(500, "internal_error", "internal server error")
        request_id = current_request_id()
        if request_id is not None:
            resp.headers["X-Request-Id"] = request_id
        return resp

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return err(exc.status, exc.code, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        """Starlette's and FastAPI's own refusals (404, an unparsable body) in the error shape."""
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        try:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            code = "http_error"
        resp = err(exc.status_code, code, str(exc.detail))
        resp.headers.update(exc.headers or {})
        return resp

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

    @app.exception_handler(RateLimitedError)
    async def rate_limited(_: Request, exc: RateLimitedError) -> JSONResponse:
        resp = JSONResponse(
            {
                "error": "rate_limited",
                "detail": str(exc),
                "bucket": exc.bucket,
                "retry_after_s": exc.retry_after_s,
            },
            status_code=429,
        )
        resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp

    @app.exception_handler(SdpError)
    async def sdp_error(_: Request, exc: SdpError) -> JSONResponse:
        return err(exc.status, exc.code, str(exc))  # 400 bad_sdp; 413 sdp_too_large

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
        if isinstance(exc, InputTooLongError):  # the client's input, not the provider
            return err(413, "input_too_long", str(exc))
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

    @app.get("/health", responses=error_responses(503))
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
            "active_calls_all_workers": await st.calls.total(),
            "max_calls": st.calls.max_calls,
            "worker": {
                "index": st.settings.worker_index,
                "count": st.settings.worker_count,
                "pid": os.getpid(),
                "ledger": st.calls.ledger.kind,
            },
            "store": {
                **st.store.describe(),
                **{f"{k}_ok": v for k, v in (await st.store.healthy()).items()},
            },
            "store_pending_writes": st.store.writer.pending,
            "store_stats": st.store.stats(),
            "jobs": st.jobs.describe() if st.jobs is not None else {},
            "library_sync": st.music.describe() if st.music is not None else None,
            "memory_trim": dataclasses.asdict(allocator.STATS),
            "uptime_s": round(time.time() - st.started_at, 1),
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics(st: State) -> Response:
        st.metrics.active_calls.set(st.calls.active)
        shared = st.worker_metrics
        body = st.metrics.render() if shared is None else await asyncio.to_thread(shared.merged)
        return Response(body, media_type="text/plain; version=0.0.4")

    @app.get("/v1/ice-servers")
    async def ice_servers(st: State) -> dict[str, Any]:
        """STUN/TURN servers for clients (empty: loopback and LAN need none)."""
        return {"ice_servers": [s.model_dump(exclude_none=True) for s in st.settings.ice_servers]}

    @app.post("/v1/rooms", status_code=201, responses=error_responses(400, 401, 403, 413, 429, 503))
    async def create_room(
        request: Request,
        st: State,
        body: RoomIn | None = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Create a room; returns its id and a join token scoped to it.

        With ``"media": "livekit"`` (LiveKit configured) the answer also carries
        ``livekit``: the server URL, the room and a caller token that joins it
        and dispatches our agent worker; 400 ``livekit_not_configured`` without it.

        Needs an API key with the ``calls`` scope where keys are required
        (``PARLEY_REQUIRE_KEYS``); the room's calls count against that key's
        quota. Rate limited per client address and per key (429).
        """
        principal = await guard(st, request, authorization, bucket="create")
        livekit = body is not None and body.media == "livekit"
        if livekit and st.livekit is None:
            raise ApiError(
                400,
                "livekit_not_configured",
                "LiveKit rooms need LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
            )
        room = await st.rooms.create(body.name if body else None, key_id=principal.key_id)
        token, exp = st.tokens.mint(room.id)
        out = await _room_out(st, room, token, exp)
        out["media"] = "livekit" if livekit else "local"
        if livekit and st.livekit is not None:  # the LiveKit room is named after ours
            out["livekit"] = st.livekit.caller_token(room.id).describe()
        return out

    @app.get("/v1/rooms/{room_id}", responses=error_responses(401, 403, 404, 503))
    async def get_room(
        room_id: str, st: State, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """A room and its live calls (the room's join token, or an admin credential;
        only admins see the calls' session ids)."""
        admin = await _room_reader(st, room_id, authorization)
        return await _room_out(st, await _room_or_404(st, room_id), reveal_sessions=admin)

    @app.delete("/v1/rooms/{room_id}", responses=error_responses(401, 403, 404, 503))
    async def delete_room(
        room_id: str, st: State, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Delete a room and end its calls (the room's token, or an admin credential)."""
        await _room_reader(st, room_id, authorization)
        await _room_or_404(st, room_id)
        ended = await st.calls.end_room(room_id)
        await st.rooms.delete(room_id)
        return {"id": room_id, "deleted": True, "calls_ended": ended}

    @app.post(
        "/v1/rooms/{room_id}/offer",
        responses={
            200: {"model": AnswerOut, "description": "The SDP answer to a JSON offer."},
            201: {
                "description": "The SDP answer to a WHIP offer; ``Location`` names the call.",
                "content": {"application/sdp": {"schema": {"type": "string"}}},
            },
            **error_responses(400, 401, 403, 404, 413, 415, 429, 503),
        },
        openapi_extra=_OFFER_BODY,
    )
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
            sdp, kind, whip = decode_offer(raw), "offer", True
        elif ctype == "application/json":
            body = _json_offer(raw)
            sdp, kind, whip = body.sdp, body.type, False
            session_id = body.session_id or session_id
        else:
            raise ApiError(415, "unsupported_media", "send application/json or application/sdp")
        grant = await authorize(
            st,
            room_id,
            bearer(authorization),
            session_id=session_id,
            session_token=x_session_token,
            address=st.limits.client_address(request),
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

    @app.delete(
        "/v1/rooms/{room_id}/calls/{call_id}", responses=error_responses(401, 403, 404, 503)
    )
    async def hang_up(
        room_id: str, call_id: str, st: State, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """End one call (WHIP-style resource deletion)."""
        st.tokens.verify(bearer(authorization), room_id)
        if not await st.calls.hang_up(call_id, room_id):
            raise ApiError(404, "call_not_found", "no such call in this room")
        return {"id": call_id, "ended": True}
