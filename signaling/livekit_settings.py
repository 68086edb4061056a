"""LiveKit settings: where the SFU is, how the agent is dispatched, how the worker runs.

``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are LiveKit's
own variable names (livekit-agents and its CLI read the same ones); the rest
are ours (prefix ``PARLEY_LIVEKIT_``). With ``LIVEKIT_URL`` unset, LiveKit is
off: the API creates local rooms only and the worker refuses to start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LiveKitNotConfiguredError(Exception):
    """LiveKit was asked for, but ``LIVEKIT_URL`` and its key and secret are not all set."""


class LiveKitSettings(BaseSettings):
    """The LiveKit server and the agent worker's knobs (see the module docstring)."""

    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    url: str | None = Field(None, alias="LIVEKIT_URL")
    """The LiveKit server, e.g. ``wss://my-project.livekit.cloud`` or ``ws://127.0.0.1:7880``."""
    api_key: str | None = Field(None, alias="LIVEKIT_API_KEY")
    api_secret: SecretStr | None = Field(None, alias="LIVEKIT_API_SECRET")
    agent_name: str = Field(
        "parley", alias="PARLEY_LIVEKIT_AGENT_NAME", min_length=1, max_length=64
    )
    """The worker registers under this name; only rooms that ask for it get the agent
    (explicit dispatch: the caller token's ``RoomAgentDispatch``)."""
    executor: Literal["thread", "process"] = Field("thread", alias="PARLEY_LIVEKIT_EXECUTOR")
    """Where jobs run: threads of the worker process, sharing one copy of the models
    (the default; right for small machines), or one process per job, each loading its
    own models (isolation at a memory cost; required with cloud providers, whose HTTP
    clients are bound to one event loop while each thread job runs its own)."""
    idle_processes: int = Field(1, alias="PARLEY_LIVEKIT_IDLE_PROCESSES", ge=1, le=64)
    """Job runners kept warm (prewarmed) ahead of dispatch; at least one.

    livekit-agents 1.3's process pool only spawns a runner for a waiting job
    when that job's own ``launch_job`` decides to, or when it refills the
    idle runners. Its decision counts spawn tasks that have finished but not
    yet left its set, so two launches in one event-loop turn (two
    ``simulate_job`` calls in a row; two dispatches racing a runner that just
    became ready) leave the second job waiting for a runner nobody spawns.
    With an idle target of one or more the refill serves it; with zero it
    would wait forever (fixed upstream by counting waiting jobs in the refill,
    livekit/agents PR 4820). A thread-executor runner costs a thread; a
    process-executor runner costs a process with its own models."""
    max_jobs: int = Field(2, alias="PARLEY_LIVEKIT_MAX_JOBS", ge=1, le=256)
    """Jobs (calls) one worker carries; the load it reports is at least jobs / max_jobs."""
    load_threshold: float = Field(0.95, alias="PARLEY_LIVEKIT_LOAD_THRESHOLD", gt=0, le=1)
    """Above this load the worker tells LiveKit it is full (no new jobs)."""
    http_host: str = Field("127.0.0.1", alias="PARLEY_LIVEKIT_HTTP_HOST")
    http_port: int = Field(8081, alias="PARLEY_LIVEKIT_HTTP_PORT", ge=0, le=65535)
    """livekit-agents' health endpoint (``GET /`` and ``/worker``); 0 picks a free port."""
    drain_timeout_s: int = Field(600, alias="PARLEY_LIVEKIT_DRAIN_TIMEOUT_S", ge=0)
    """On SIGTERM, how long running calls may go on before the worker stops anyway."""
    prewarm_timeout_s: float = Field(120.0, alias="PARLEY_LIVEKIT_PREWARM_TIMEOUT_S", gt=0)
    """How long a job runner may take to load the models."""
    token_ttl_s: int = Field(3600, alias="PARLEY_LIVEKIT_TOKEN_TTL_S", ge=60)
    """Lifetime of the caller tokens ``POST /v1/rooms`` hands out."""

    @property
    def configured(self) -> bool:
        """Whether the URL, key and secret are all set."""
        return bool(self.url and self.api_key and self.api_secret)

    def credentials(self) -> tuple[str, str, str]:
        """``(url, key, secret)``; ``LiveKitNotConfiguredError`` when one is missing."""
        if not (self.url and self.api_key and self.api_secret):
            raise LiveKitNotConfiguredError(
                "LiveKit is not configured: set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
            )
        return self.url, self.api_key, self.api_secret.get_secret_value()
