"""The LiveKit agent worker: our VoiceSession as a LiveKit agent, built on livekit-agents.

Run it with ``python -m signaling.livekit_worker`` (``--dev`` for LiveKit's
development defaults). It is a livekit-agents ``AgentServer``:

- it registers with ``LIVEKIT_URL`` using ``LIVEKIT_API_KEY`` /
  ``LIVEKIT_API_SECRET`` under ``PARLEY_LIVEKIT_AGENT_NAME`` (explicit
  dispatch: only rooms whose token or dispatch request names the agent);
- each job runner is prewarmed with ``prewarm``: the models load once per
  process (``WorkerRuntime.shared``). Jobs run in threads of the worker by
  default (every job shares one copy of the models: right for small
  machines) or, with ``PARLEY_LIVEKIT_EXECUTOR=process``, in processes of
  their own (each loading its own copy);
- the load it reports is the larger of its CPU use and its share of
  ``PARLEY_LIVEKIT_MAX_JOBS`` running jobs; past
  ``PARLEY_LIVEKIT_LOAD_THRESHOLD`` LiveKit sends jobs elsewhere;
- SIGTERM (or SIGINT) drains: no new jobs, running calls go on for up to
  ``PARLEY_LIVEKIT_DRAIN_TIMEOUT_S``, then the worker stops.

A job (``entrypoint``) is one call: connect audio-only, wait for the caller
(a browser or a LiveKit SIP participant), open a session through the same
``CallManager`` and call bridge as every other transport (transport
``livekit``; the LiveKit room, the caller's identity and kind, the job id
as attributes; sessions, turns and costs in the same store), run it over a
``media.livekit.LiveKitTransport`` until it ends, then leave the room.

Each job opens its own store on its own event loop: a thread-executor job
runs on an event loop of its own thread, and asyncpg connections, Redis
clients and the store's writer tasks belong to the loop that made them. That
store is small (at most ``JOB_DB_POOL_SIZE + JOB_DB_MAX_OVERFLOW`` SQL
connections, on PostgreSQL named ``parley-livekit:<job id>`` in
``pg_stat_activity``) and is closed when the job ends, whatever ended it.
A process-executor process runs one job and exits, so its store is also
the process's only one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobExecutorType, JobProcess

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.phrase_cache import cached_tts
from agent.pricing import PriceTable
from agent.runtime import AgentModels
from media.livekit import LiveKitTransport
from signaling.calls import Call, CallLimitError, CallManager
from signaling.ledger import open_ledger
from signaling.livekit_settings import LiveKitSettings
from signaling.settings import ServerSettings
from store.settings import StoreSettings
from store.store import Store

log = logging.getLogger(__name__)

RUNTIME_KEY = "parley"
"""Where ``prewarm`` leaves the ``WorkerRuntime`` in ``JobProcess.userdata``."""
TRANSPORT = "livekit"
JOB_DB_POOL_SIZE = 1
"""SQL connections a job's store keeps open: one call's writes and lookups."""
JOB_DB_MAX_OVERFLOW = 1
"""One more under a burst (a phrase-cache lookup beside a turn write), closed after use."""
JOB_DB_APPLICATION = "parley-livekit:"
"""Prefix of a job's PostgreSQL ``application_name`` (then the job id)."""


@dataclass(frozen=True, slots=True)
class WorkerRuntime:
    """What every job of a process shares: settings, the agent, its models and prices."""

    server: ServerSettings
    store: StoreSettings
    config: AgentConfig
    models: AgentModels
    prices: PriceTable
    loaded_at: float

    @classmethod
    def load(cls, models: AgentModels | None = None) -> WorkerRuntime:
        """Read the settings and load the models (blocking: seconds), or share ``models``."""
        server = ServerSettings()
        config = AgentConfig.load(server.agent_config)
        if models is None:
            models = AgentModels.load(config)
        return cls(
            server=server,
            store=StoreSettings(),
            config=config,
            models=models,
            prices=PriceTable.load(server.prices),
            loaded_at=time.time(),
        )

    @classmethod
    def shared(cls) -> WorkerRuntime:
        """This process's runtime, loaded by the first caller (the first prewarm)."""
        with _SHARED_LOCK:
            global _SHARED
            if _SHARED is None:
                started = time.perf_counter()
                _SHARED = cls.load()
                log.info(
                    "livekit worker: models loaded in %.1f s (%s)",
                    time.perf_counter() - started,
                    _SHARED.models.load_seconds,
                )
            return _SHARED

    @classmethod
    def install(cls, runtime: WorkerRuntime) -> None:
        """Use an already loaded runtime in this process (the thread executor's jobs
        then share it; a process executor's children still load their own)."""
        with _SHARED_LOCK:
            global _SHARED
            _SHARED = runtime


_SHARED: WorkerRuntime | None = None
_SHARED_LOCK = threading.Lock()


def check_executor(executor: str, config: AgentConfig, env: Mapping[str, str]) -> None:
    """Refuse cloud providers on the thread executor (``ConfigError``, one line).

    Thread-executor jobs share one ``AgentModels`` but each runs its own event
    loop; a cloud adapter's SDK client keeps pooled HTTP connections bound to
    the loop that opened them, so the next job using it fails ("bound to a
    different event loop", "Event loop is closed"). The local models are safe
    there: their inference threads hand each result to the caller's own loop.
    """
    cloud = config.providers.with_environment(env).cloud()
    if executor == "thread" and cloud:
        raise ConfigError(
            f"cloud providers ({', '.join(sorted(cloud))}) need "
            "PARLEY_LIVEKIT_EXECUTOR=process: their HTTP clients cannot be shared "
            "by the thread executor's jobs, which run on event loops of their own"
        )


def prewarm(proc: JobProcess) -> None:
    """livekit-agents' ``setup_fnc``: give the job runner this process's models."""
    proc.userdata[RUNTIME_KEY] = WorkerRuntime.shared()


def worker_load(max_jobs: int, server: AgentServer) -> float:
    """The load reported to LiveKit: the larger of the CPU load (the last minute's load
    average per core) and the share of ``max_jobs`` running."""
    jobs = len(server.active_jobs) / max_jobs
    cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return float(min(1.0, max(jobs, cpu)))


class LiveKitJob:
    """One dispatched job: a store, a call manager and the caller's call.

    ``run`` carries the call until it ends; ``aclose`` (idempotent, also the
    job's shutdown callback) ends it and closes what the job opened.
    """

    def __init__(self, runtime: WorkerRuntime, ctx: JobContext) -> None:
        self._runtime = runtime
        self._ctx = ctx
        self._store: Store | None = None
        self._calls: CallManager | None = None
        self.call: Call | None = None
        self._closing: asyncio.Task[None] | None = None

    async def run(self, caller: rtc.RemoteParticipant) -> str:
        """Carry the caller's call until it ends; returns why it ended."""
        rt = self._runtime
        self._store = store = await open_job_store(rt.store, self._ctx.job.id)
        self._calls = calls = CallManager(
            dataclasses.replace(rt.models, tts=cached_tts(rt.models.tts, store.phrases)),
            rt.config,
            max_calls=rt.server.max_calls,
            idle_timeout_s=rt.server.idle_timeout_s,
            no_audio_timeout_s=rt.server.no_audio_timeout_s,
            store=store,
            prices=rt.prices,
            ledger=open_ledger(
                redis_url=rt.store.redis_url,
                prefix=rt.store.key_prefix,
                data_dir=rt.store.data_dir,
                workers=1,
            ),
        )
        room_name = self._ctx.job.room.name
        ours = await store.rooms.get(room_name)  # a room made by POST /v1/rooms
        try:
            self.call = call = await calls.open(
                TRANSPORT,
                room_id=ours.id if ours is not None else None,
                output_rate=rt.server.output_rate,
                attributes=call_attributes(self._ctx, caller),
                key_id=ours.key_id if ours is not None else None,
            )
        except CallLimitError as exc:
            log.warning("livekit job %s refused: %s", self._ctx.job.id, exc)
            return "too many calls"
        try:
            transport = await LiveKitTransport.open(self._ctx.room, caller, rt.server.output_rate)
        except BaseException:
            await calls.end(call, "call setup failed")
            raise
        calls.start(call, transport)
        await call.wait_ended()
        return call.end_reason or "call ended"

    async def aclose(self, reason: str = "job shutdown") -> None:
        """End the call and close the store (idempotent; waits for a closing in progress)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(reason or "job shutdown"), name="livekit-job:close"
            )
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        try:
            if self._calls is not None:
                if self.call is not None:
                    await self._calls.end(self.call, reason)
                await self._calls.shutdown()
        finally:
            if self._store is not None:
                await self._store.close()


async def open_job_store(settings: StoreSettings, job_id: str) -> Store:
    """A job's own store on the running loop: a small SQL pool, no migrations (``main``
    ran them), its PostgreSQL connections named after the job."""
    engine_args: dict[str, object] = {}
    if not settings.embedded:
        name = (JOB_DB_APPLICATION + job_id)[:63]  # PostgreSQL keeps 63 bytes
        engine_args["server_settings"] = {"application_name": name}
    return await Store.open(
        settings,
        engine_args=engine_args,
        migrate_schema=False,
        pool_size=JOB_DB_POOL_SIZE,
        max_overflow=JOB_DB_MAX_OVERFLOW,
    )


def call_attributes(ctx: JobContext, caller: rtc.RemoteParticipant) -> dict[str, str]:
    """What the store keeps of a LiveKit call: the room, the caller, the job."""
    kind = "sip" if caller.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP else "standard"
    return {
        "livekit_room": ctx.job.room.name,
        "participant": caller.identity,
        "participant_kind": kind,
        "job_id": ctx.job.id,
    }


async def entrypoint(ctx: JobContext) -> None:
    """livekit-agents' job entry point: one call with the first caller to join."""
    runtime: WorkerRuntime = ctx.proc.userdata[RUNTIME_KEY]
    job = LiveKitJob(runtime, ctx)
    ctx.add_shutdown_callback(job.aclose)
    reason = "call ended"
    try:
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        caller = await ctx.wait_for_participant()
        log.info("livekit job %s: caller joined (%s)", ctx.job.id, caller.kind)
        reason = await job.run(caller)
    finally:
        await job.aclose(reason)
        ctx.shutdown(reason)  # leave the room: the call is over


def build_server(settings: LiveKitSettings) -> AgentServer:
    """The ``AgentServer`` of these settings, its session registered under the agent name."""
    url, key, secret = settings.credentials()
    executor = JobExecutorType.PROCESS if settings.executor == "process" else JobExecutorType.THREAD
    server = AgentServer(
        job_executor_type=executor,
        load_threshold=settings.load_threshold,
        num_idle_processes=settings.idle_processes,
        initialize_process_timeout=settings.prewarm_timeout_s,
        drain_timeout=settings.drain_timeout_s,
        ws_url=url,
        api_key=key,
        api_secret=secret,
        host=settings.http_host,
        port=settings.http_port,
        setup_fnc=prewarm,
        load_fnc=functools.partial(worker_load, settings.max_jobs),
    )
    server.rtc_session(entrypoint, agent_name=settings.agent_name)
    return server


async def serve(server: AgentServer, *, drain_timeout_s: int, devmode: bool = False) -> None:
    """Run ``server`` until SIGTERM or SIGINT, then drain and stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = loop.create_task(server.run(devmode=devmode), name="livekit:server")
    stopping = loop.create_task(stop.wait(), name="livekit:signal")
    try:
        await asyncio.wait([runner, stopping], return_when=asyncio.FIRST_COMPLETED)
        if stopping.done():
            log.info("livekit worker: draining (up to %d s)", drain_timeout_s)
            try:
                await server.drain(timeout=drain_timeout_s)
            except TimeoutError:
                log.warning("livekit worker: calls still running after the drain timeout")
            await server.aclose()
        await runner
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        stopping.cancel()
        runner.cancel()
        await asyncio.gather(runner, stopping, return_exceptions=True)


async def _prepare_store(settings: StoreSettings) -> None:
    """Create or migrate the schema once, before any job opens the store."""
    store = await Store.open(settings)
    await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m signaling.livekit_worker``: run the LiveKit agent worker."""
    parser = argparse.ArgumentParser(
        prog="python -m signaling.livekit_worker", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument(
        "--dev", action="store_true", help="LiveKit's development defaults (no load threshold)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = LiveKitSettings()
    if not settings.configured:
        parser.error("set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    try:
        check_executor(
            settings.executor, AgentConfig.load(ServerSettings().agent_config), os.environ
        )
    except ConfigError as exc:
        parser.error(str(exc))
    asyncio.run(_prepare_store(StoreSettings()))
    server = build_server(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(server, drain_timeout_s=settings.drain_timeout_s, devmode=args.dev))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
