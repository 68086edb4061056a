"""Server settings from environment variables (prefix ``PARLEY_``) or flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class IceServer(BaseModel):
    """A STUN or TURN server as the browser's RTCIceServer expects it."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class ServerSettings(BaseSettings):
    """Everything the server reads from its environment.

    ``PARLEY_ICE_SERVERS`` takes JSON, e.g.
    ``[{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]``.
    """

    model_config = SettingsConfigDict(env_prefix="PARLEY_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    agent_config: Path | None = None
    """Agent YAML file; default ``agents/default.yaml``."""
    jwt_secret: SecretStr | None = None
    """HMAC key of join and session tokens (32+ bytes). Unset: a key generated once and
    kept in ``PARLEY_DATA_DIR/jwt_secret`` (mode 0600), so tokens outlive a restart and
    workers sharing the data directory accept each other's. Set it when workers on
    several machines must accept each other's tokens."""
    token_ttl_s: int = Field(3600, ge=10)
    max_calls: int = Field(4, ge=1)
    """Concurrent calls (WebRTC and WebSocket) beyond which new calls get 503."""
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    idle_timeout_s: float = Field(120.0, gt=0)
    """A call whose caller has been silent this long is ended."""
    ice_servers: list[IceServer] = Field(default_factory=list)
    output_rate: int = 48_000
    """Rate of the agent's WebRTC track (Opus runs at 48 kHz)."""
