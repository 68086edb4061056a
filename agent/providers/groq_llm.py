"""Groq's LLMs on the official ``groq`` SDK, streamed like any chat-completions vendor.

The request and stream translation is ``agent.providers.openai_llm.ChatCompletionsLLM``
(Groq's API is OpenAI-compatible, under ``/openai/v1``); this module only
builds the ``AsyncGroq`` client. Groq reports usage in ``x_groq.usage`` of the
last chunk without being asked (its SDK has no ``stream_options``).

Default model ``llama-3.3-70b-versatile``: Groq's production general-purpose
model with tool use, at a few hundred tokens per second.
``llama-3.1-8b-instant`` halves the first-token latency for simple agents
that need no reliable tool calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.providers.cloud_errors import groq_errors
from agent.providers.openai_llm import ChatCompletionsLLM, check_endpoint, client_options

GROQ_BASE_URL = "https://api.groq.com"
"""Root of Groq's API; the SDK adds ``/openai/v1/...``."""


@dataclass(frozen=True, slots=True)
class GroqSettings:
    """Groq's chat-completions endpoint."""

    api_key: str = field(repr=False)
    """``gsk_...`` key (never logged)."""
    model: str = "llama-3.3-70b-versatile"
    base_url: str = GROQ_BASE_URL
    timeout_s: float = 10.0
    """See ``agent.providers.openai_llm.client_options``."""
    provider: str = "groq"
    """Name in usage records and errors."""

    def __post_init__(self) -> None:
        check_endpoint(self)


class GroqLLM(ChatCompletionsLLM):
    """``ChatCompletionsLLM`` on the ``groq`` SDK (``AsyncGroq``)."""

    def __init__(self, settings: GroqSettings) -> None:
        from groq import AsyncGroq

        self.settings = settings
        client = AsyncGroq(**client_options(settings))
        super().__init__(
            client.chat.completions.create,
            client.close,
            provider=settings.provider,
            model=settings.model,
            errors=groq_errors(),
            ask_usage=False,  # the SDK has no stream_options; x_groq.usage comes unasked
        )
