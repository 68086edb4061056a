"""Server settings from environment variables (prefix ``PARLEY_``) or flags."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from media.jitter import INBOUND_PREFETCH, MAX_PREFETCH
from signaling.platform_settings import OAuthClientSettings, SoundCloudSettings, SpotifySettings


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

    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,  # a rejected value may be a secret: never echo it
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    agent_config: Path | None = None
    """Agent YAML file; default ``agents/default.yaml``."""
    prices: Path | None = None
    """YAML price table of the providers (``PARLEY_PRICES``), used to estimate each turn's
    cost; default ``agents/prices.yaml`` (vendors' list prices, as estimates)."""
    jwt_secret: SecretStr | None = None
    """HMAC key of join and session tokens (32+ bytes). Unset: a key generated once and
    kept in ``PARLEY_DATA_DIR/jwt_secret`` (mode 0600), so tokens outlive a restart and
    workers sharing the data directory accept each other's. Set it when workers on
    several machines must accept each other's tokens."""
    token_ttl_s: int = Field(3600, ge=10)
    session_chain_max_s: int = Field(30 * 24 * 3600, ge=60)
    """How long a returning user's sessions may continue each other
    (``PARLEY_SESSION_CHAIN_MAX_S``, default 30 days): a new session created with an
    earlier session's token (``X-Session-Token``) joins its chain, whose tokens all
    expire this long after its first one; then the user signs in again
    (``signaling.tokens``)."""
    admin_token: SecretStr | None = Field(None, min_length=16)
    """Bootstrap admin credential (``Authorization: Bearer ...``): it has the ``admin``
    scope of an API key (every session, API keys, SIP admin), so an operator can create
    the first keys over HTTP (``POST /v1/keys``) as well as with ``python -m store keys
    create``. Unset: admin access with admin-scope API keys only. At least 16
    characters; generate it, e.g.
    ``python -c 'import secrets; print(secrets.token_urlsafe(32))'``."""
    require_keys: Literal["auto", "true", "false"] = "auto"
    """Whether creating rooms and sessions (and the chat, STT and TTS utilities) needs an
    API key with the ``calls`` scope (``PARLEY_REQUIRE_KEYS``). ``auto``: only when the
    server listens on an address other than loopback (``127.0.0.1``, ``::1``,
    ``localhost``); ``true``: always; ``false``: never (anonymous callers everywhere)."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins (``https://app.example.org``) whose pages may call the API from a
    browser (``PARLEY_CORS_ORIGINS``, comma-separated or a JSON list; ``*``: any).
    Empty (default): no CORS headers at all, so only the server's own page can."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Reverse proxies (CIDRs) whose ``X-Forwarded-For`` names the client address used by
    the rate limits (``PARLEY_TRUSTED_PROXIES``); empty (default): the peer address."""
    rate_limit_create: str = "30/minute"
    """Room and session creation, per client address and per API key
    (``PARLEY_RATE_LIMIT_CREATE``; ``limits`` notation, several joined by ``;``, e.g.
    ``5/second;30/minute``; ``off`` disables it)."""
    rate_limit_offer: str = "30/minute"
    """Calls placed (WebRTC offers, WebSocket calls), per client address and per API key
    of the room (``PARLEY_RATE_LIMIT_OFFER``)."""
    rate_limit_chat: str = "60/minute"
    """Text chat turns (``POST /v1/chat/text``) per client address and API key
    (``PARLEY_RATE_LIMIT_CHAT``)."""
    rate_limit_voice: str = "30/minute"
    """STT and TTS utility requests per client address and API key
    (``PARLEY_RATE_LIMIT_VOICE``)."""
    max_calls: int = Field(4, ge=1)
    """Concurrent calls (all transports, all workers) beyond which new calls get 503."""
    workers: int | None = Field(None, ge=1, le=64)
    """Worker processes of ``python -m signaling`` (``--workers``); None: one per core."""
    worker_index: int = Field(0, ge=0)
    """This process's index among the workers (set by the supervisor; 0 runs SIP and the
    periodic jobs)."""
    worker_count: int = Field(1, ge=1)
    """How many workers serve the port (set by the supervisor)."""
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    idle_timeout_s: float = Field(120.0, gt=0)
    """A call whose caller has neither spoken nor typed this long is ended."""
    malloc_arena_max: int | None = Field(2, ge=1, le=64)
    """glibc malloc arenas per worker process (``PARLEY_MALLOC_ARENA_MAX``; unset: glibc's
    default of 8 per core). Fewer arenas keep less freed memory stranded after a burst
    of requests (``signaling.allocator``); ``MALLOC_ARENA_MAX`` in the environment wins."""
    no_audio_timeout_s: float = Field(15.0, gt=0)
    """A call whose transport delivered no audio frame at all this long is ended
    (``PARLEY_NO_AUDIO_TIMEOUT_S``): a vanished WebRTC peer, a WebSocket that sends
    nothing. Clients send audio continuously, silence included. SIP fills silence
    itself and keeps its own ``sip_no_rtp_timeout_s``."""
    warm_up: bool = True
    """Run each local model once at start-up, before the server reports ready
    (``PARLEY_WARM_UP``; ``agent.warmup``): the first caller does not pay the models'
    first-use cost, and the llama.cpp prefix cache holds the system prompt."""
    ice_servers: list[IceServer] = Field(default_factory=list)
    output_rate: int = 48_000
    """Rate of the agent's WebRTC track (Opus runs at 48 kHz)."""
    webrtc_inbound_prefetch: int = Field(INBOUND_PREFETCH, ge=0, le=MAX_PREFETCH)
    """Packets (20 ms each) of a WebRTC caller's audio held before decoding
    (``PARLEY_WEBRTC_INBOUND_PREFETCH``, ``media.jitter``). 0 (default): none, each packet
    goes to the VAD and STT as it arrives and one reordered past its successor is dropped;
    N: aiortc's own jitter buffer with prefetch N (aiortc's default 4 adds 80 ms to every
    turn's end and every barge-in, and lags for good after a loss or a reordering)."""
    sip_listen: str = "127.0.0.1:5060"
    """SIP on UDP and TCP at ``HOST:PORT`` (``[v6]:PORT`` for IPv6); ``off`` disables it."""
    sip_public_ip: str | None = None
    """The address put in SDP and Contact when the server sits behind NAT."""
    sip_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )
    """Source networks (CIDRs) SIP requests are accepted from (JSON list, or comma-separated)."""
    sip_users: SecretStr | None = None
    """Digest users allowed to call, ``user:password,user2:password2``; unset: no digest auth."""
    rtp_ports: str = "10000-20000"
    """UDP port range of the calls' RTP sessions (``LOW-HIGH``)."""
    sip_transfer_uri: str | None = Field(None, pattern=r"^sips?:[^\s<>]+$")
    """Where a blind transfer (REFER) sends a phone caller, e.g. ``sip:desk@pbx.example``."""
    sip_no_rtp_timeout_s: float = Field(30.0, gt=0)
    """A SIP call whose caller sent no RTP for this long is hung up."""

    spotify: SpotifySettings = Field(default_factory=SpotifySettings)
    """Spotify's OAuth client and endpoints (``PARLEY_SPOTIFY_*``, see
    ``signaling.platform_settings``)."""
    soundcloud: SoundCloudSettings = Field(default_factory=SoundCloudSettings)
    """SoundCloud's OAuth client and endpoints (``PARLEY_SOUNDCLOUD_*``)."""
    oauth_state_ttl_s: int = Field(600, ge=60, le=3600)
    """How long a platform login may take between ``/login`` and ``/callback``."""

    sip_echo_cancel: bool = True
    """Cancel the echo of phone callers on a speakerphone (WebRTC's canceller). Measured
    trade-off: with it, a caller on a handset (no echo) is heard less well while the agent
    talks, so barge-in is slower and sometimes missed; without it, a speakerphone's echo
    makes the agent interrupt itself. See bench/results for the figures."""

    def platforms(self) -> dict[str, OAuthClientSettings]:
        """Every known platform's OAuth settings by name (configured or not)."""
        return {"spotify": self.spotify, "soundcloud": self.soundcloud}

    def sip_endpoint(self) -> tuple[str, int] | None:
        """``sip_listen`` as ``(host, port)``; None when SIP is off."""
        text = self.sip_listen.strip()
        if text.lower() == "off":
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"PARLEY_SIP_LISTEN must be HOST:PORT or off, got {text!r}")
        return host.strip("[]") or "127.0.0.1", int(port)

    def sip_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``sip_allow`` parsed (``ValueError`` names a bad entry)."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.sip_allow)

    def sip_user_passwords(self) -> dict[str, str]:
        """``sip_users`` parsed into user -> password (``ValueError`` on a bad entry)."""
        if self.sip_users is None:
            return {}
        users: dict[str, str] = {}
        for entry in self.sip_users.get_secret_value().split(","):
            user, sep, password = entry.strip().partition(":")
            if not sep or not user or not password:
                raise ValueError("PARLEY_SIP_USERS entries must be user:password")
            users[user] = password
        return users

    def rtp_port_range(self) -> tuple[int, int]:
        """``rtp_ports`` as ``(low, high)`` (``ValueError`` when it is not a valid range)."""
        low, sep, high = self.rtp_ports.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"PARLEY_RTP_PORTS must be LOW-HIGH, got {self.rtp_ports!r}")
        lo, hi = int(low), int(high)
        if not 1024 <= lo < hi <= 65535:
            raise ValueError(f"PARLEY_RTP_PORTS must be within 1024-65535, got {lo}-{hi}")
        return lo, hi

    @field_validator("require_keys", mode="before")
    @classmethod
    def _require_keys_word(cls, value: object) -> object:
        """Accept the usual spellings of a boolean (``1``, ``yes``, ``on``...) as well."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            text = value.strip().lower()
            return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false"}.get(
                text, "false" if text == "off" else text
            )
        return value

    @field_validator("sip_allow", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated_list(cls, value: object) -> object:
        """A JSON list, or comma-separated values (``PARLEY_SIP_ALLOW=10.0.0.0/8,::1/128``)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        """Origins are ``scheme://host[:port]`` (no path, no trailing slash), or ``*``."""
        origins = [o.rstrip("/") for o in value]
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"PARLEY_CORS_ORIGINS entries are scheme://host[:port]: {origin!r}"
                )
        return origins

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        """Each entry must be an address or a network."""
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("rate_limit_create", "rate_limit_offer", "rate_limit_chat", "rate_limit_voice")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        """``off``, or what ``limits`` parses (``30/minute``, ``5/second;100/hour``)."""
        text = value.strip()
        if text.lower() == "off":
            return "off"
        try:
            parse_many(text)
        except ValueError as exc:
            raise ValueError(f"not a rate limit ({exc}); write e.g. 30/minute, or off") from exc
        return text

    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_admin_token_is_unset(cls, value: object) -> object:
        """``PARLEY_ADMIN_TOKEN=`` (empty, as compose files often pass it) means unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value
