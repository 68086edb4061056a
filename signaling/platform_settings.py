"""Third-party platforms' OAuth clients: one settings group per platform.

Each platform reads ``PARLEY_<PLATFORM>_<FIELD>`` (``PARLEY_SPOTIFY_CLIENT_ID``,
``PARLEY_SPOTIFY_CLIENT_SECRET``, ``PARLEY_SOUNDCLOUD_TOKEN_URL``...). A
platform without a client id is not offered (its login answers 409). The
URLs default to the vendors' documented endpoints and are configurable, so
tests point them at a loopback server.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_COMMON = {"env_file": ".env", "extra": "ignore", "hide_input_in_errors": True}


class OAuthClientSettings(BaseSettings):
    """One platform's OAuth 2.0 client registration and endpoints."""

    model_config = SettingsConfigDict(**_COMMON)  # type: ignore[typeddict-item]

    client_id: str | None = Field(None, min_length=1, max_length=200)
    """The application's client id at the platform (unset: the platform is not offered)."""
    client_secret: SecretStr | None = None
    """The application's client secret (sent to the token endpoint only)."""
    authorize_url: str
    """Where the user's browser is sent to grant access."""
    token_url: str
    """The token endpoint (authorization code and refresh token grants)."""
    api_url: str
    """Base URL of the platform's Web API (used by the adapters in ``agent.platforms``)."""
    revoke_url: str | None = None
    """Where tokens are revoked when an account is removed (None: the platform has none)."""
    revoke_style: Literal["rfc7009", "sign_out"] = "rfc7009"
    """``rfc7009``: form ``token=...`` with client authentication (RFC 7009);
    ``sign_out``: JSON ``{"access_token": ...}`` (SoundCloud's sign-out)."""
    client_auth: Literal["basic", "body"] = "basic"
    """How the client authenticates at the token endpoint: HTTP Basic, or
    ``client_id``/``client_secret`` in the form body."""
    scopes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Scopes asked for (space- or comma-separated, or a JSON list)."""
    redirect_uri: str | None = None
    """The callback URL registered at the platform. Unset: this server's
    ``/v1/platforms/<name>/callback`` at the address the login request reached
    (set it behind a reverse proxy)."""

    @property
    def configured(self) -> bool:
        """Whether the platform is offered (a client id is set)."""
        return self.client_id is not None

    @field_validator("scopes", mode="before")
    @classmethod
    def _scope_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [s for s in text.replace(",", " ").split() if s]
        return value

    @field_validator("authorize_url", "token_url", "api_url", "revoke_url", "redirect_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value


class SpotifySettings(OAuthClientSettings):
    """Spotify (``PARLEY_SPOTIFY_*``): accounts.spotify.com and the Web API."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_SPOTIFY_", **_COMMON)  # type: ignore[typeddict-item]

    authorize_url: str = "https://accounts.spotify.com/authorize"
    token_url: str = "https://accounts.spotify.com/api/token"
    api_url: str = "https://api.spotify.com/v1"
    revoke_url: str | None = None  # Spotify documents no revocation endpoint
    client_auth: Literal["basic", "body"] = "basic"
    market: str | None = Field(None, pattern=r"^[A-Z]{2}$")
    """The ISO 3166-1 country searches ask for (``PARLEY_SPOTIFY_MARKET``, e.g. ``SE``);
    unset: each account's own. Search answers are cached per market
    (``signaling.music_search``)."""
    scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "user-read-playback-state",
            "user-modify-playback-state",
            "user-read-currently-playing",
            "playlist-read-private",
            "playlist-modify-private",
            "playlist-modify-public",
            "user-library-read",
            "user-library-modify",
        ]
    )


class SoundCloudSettings(OAuthClientSettings):
    """SoundCloud (``PARLEY_SOUNDCLOUD_*``): secure.soundcloud.com (OAuth 2.1, PKCE,
    single-use refresh tokens) and api.soundcloud.com."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_SOUNDCLOUD_", **_COMMON)  # type: ignore[typeddict-item]

    authorize_url: str = "https://secure.soundcloud.com/authorize"
    token_url: str = "https://secure.soundcloud.com/oauth/token"
    api_url: str = "https://api.soundcloud.com"
    revoke_url: str | None = "https://secure.soundcloud.com/sign-out"
    revoke_style: Literal["rfc7009", "sign_out"] = "sign_out"
    client_auth: Literal["basic", "body"] = "body"
