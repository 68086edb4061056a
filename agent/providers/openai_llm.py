"""Cloud LLMs on the OpenAI chat-completions API, streamed (OpenAI and any compatible server).

``ChatCompletionsLLM`` is the part every OpenAI-style vendor shares: our
``ChatMessage``s in the wire format, ``GenerationSettings`` as request
options, and the streamed ``chat.completion.chunk``s back into
``TextDelta`` / ``ToolCallDelta`` / one final ``UsageDelta``. It drives any
Stainless-generated SDK client (``openai.AsyncOpenAI`` here,
``groq.AsyncGroq`` in ``agent.providers.groq_llm``), whose streaming shapes
are the same.

Settings mapping: ``max_tokens`` (sent as ``max_completion_tokens``, or as
``max_tokens`` for servers that only know the old name), ``temperature``,
``top_p`` and ``seed``. ``repeat_penalty`` is left out: llama.cpp's penalty
divides the logits of every repeated token, while OpenAI's
``frequency_penalty`` subtracts a multiple of each token's count on a
-2..2 scale; no value of one reproduces the other, and hosted chat models
are served without a penalty by default.

Cancellation: cancelling the consumer while the request is being sent
aborts it (httpx closes the connection); closing the stream or cancelling
the consumer while it waits for a chunk closes the HTTP response at once,
so the server sees the disconnect (and can stop generating). ``aclose()``
closes the SDK client and its connection pool.

The SDKs are imported when an adapter is built, so this module imports
without the ``cloud`` extra installed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent.errors import ProviderError
from agent.llm import (
    ChatMessage,
    GenerationSettings,
    LLMDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.providers.cloud_errors import SDKErrors, openai_errors, provider_error

MaxTokensParam = Literal["max_completion_tokens", "max_tokens"]


# ------------------------------------------------------------------ wire format


def wire_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Chat messages in the chat-completions wire format.

    An assistant message with tool calls carries them as ``tool_calls`` (its
    ``content`` only when it has text); a tool result becomes a ``tool``
    message naming the call it answers. Raises ``ValueError`` for a tool
    message without ``tool_call_id`` (the API rejects it).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            if not message.tool_call_id:
                raise ValueError("a tool message needs the tool_call_id of the call it answers")
            out.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
        elif message.role == "assistant" and message.tool_calls:
            entry: dict[str, Any] = {"role": "assistant"}
            if message.content:
                entry["content"] = message.content
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
            out.append(entry)
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def wire_options(
    settings: GenerationSettings,
    tools: Sequence[ToolSpec],
    max_tokens_param: MaxTokensParam = "max_completion_tokens",
) -> dict[str, Any]:
    """Request options for ``settings`` and ``tools`` (``tools`` only when there are some)."""
    options: dict[str, Any] = {
        max_tokens_param: settings.max_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
    }
    if settings.seed is not None:
        options["seed"] = settings.seed
    if tools:  # OpenAI rejects an empty list
        options["tools"] = [tool.to_openai() for tool in tools]
    return options


# ------------------------------------------------- streamed chunks (both SDKs)


class _FunctionFragment(Protocol):
    @property
    def name(self) -> str | None: ...

    @property
    def arguments(self) -> str | None: ...


class _ToolCallFragment(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def id(self) -> str | None: ...

    @property
    def function(self) -> _FunctionFragment | None: ...


class _Delta(Protocol):
    @property
    def content(self) -> str | None: ...

    @property
    def tool_calls(self) -> Sequence[_ToolCallFragment] | None: ...


class _Choice(Protocol):
    @property
    def delta(self) -> _Delta: ...

    @property
    def finish_reason(self) -> str | None: ...


class _Usage(Protocol):
    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


class _Chunk(Protocol):
    @property
    def choices(self) -> Sequence[_Choice]: ...

    @property
    def usage(self) -> _Usage | None: ...


class ChunkStream(Protocol):
    """An SDK's ``AsyncStream[ChatCompletionChunk]``."""

    def __aiter__(self) -> AsyncIterator[_Chunk]: ...

    async def close(self) -> None:
        """Close the HTTP response (idempotent)."""
        ...


def _usage(chunk: _Chunk) -> _Usage | None:
    """The usage a chunk reports: ``usage`` (``stream_options.include_usage``),
    else Groq's ``x_groq.usage`` (sent in the last chunk whether asked or not)."""
    if chunk.usage is not None:
        return chunk.usage
    usage: _Usage | None = getattr(getattr(chunk, "x_groq", None), "usage", None)
    return usage


class Endpoint(Protocol):
    """What the settings of every cloud adapter name: where, with which key, how patiently."""

    @property
    def api_key(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def timeout_s(self) -> float: ...


def check_endpoint(endpoint: Endpoint) -> None:
    """``ValueError`` for settings no request could succeed with."""
    if not endpoint.api_key:
        raise ValueError("api_key must not be empty (servers that want none accept any text)")
    if not endpoint.timeout_s > 0:
        raise ValueError("timeout_s must be > 0")
    if not endpoint.model:
        raise ValueError("model must not be empty")


def client_options(endpoint: Endpoint) -> dict[str, Any]:
    """Constructor arguments of an ``openai`` / ``groq`` SDK client for ``endpoint``.

    The SDK's own retries are off (``max_retries=0``): retries and fallbacks
    belong to the caller, decided from the typed errors. ``timeout`` limits
    each step of a request (connecting, sending, the wait for every next
    piece of the answer), not a whole streamed reply.
    """
    return {
        "api_key": endpoint.api_key,
        "base_url": endpoint.base_url,
        "timeout": endpoint.timeout_s,
        "max_retries": 0,
    }


class ChatCompletionsLLM:
    """Implements ``agent.llm.LLM`` over one SDK client's streamed chat completions.

    ``create`` is the client's ``chat.completions.create`` and ``close`` its
    ``close``; ``errors`` names the SDK's exception classes. ``ask_usage``
    sends ``stream_options.include_usage``, without which OpenAI reports no
    usage in a stream (Groq reports it in ``x_groq`` unasked).
    ``OpenAICompatibleLLM`` and ``GroqLLM`` bind it to their SDKs.
    """

    supports_tools: bool = True

    def __init__(
        self,
        create: Callable[..., Awaitable[ChunkStream]],
        close: Callable[[], Awaitable[None]],
        *,
        provider: str,
        model: str,
        errors: SDKErrors,
        max_tokens_param: MaxTokensParam = "max_completion_tokens",
        ask_usage: bool = True,
    ) -> None:
        self.provider = provider
        self.model = model
        self._create = create
        self._close = close
        self._errors = errors
        self._max_tokens_param: MaxTokensParam = max_tokens_param
        self._options: dict[str, Any] = (
            {"stream_options": {"include_usage": True}} if ask_usage else {}
        )
        self._closed = False

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        """Yield the reply's text and tool-call fragments, then one ``UsageDelta``.

        The usage is the vendor's when it reports it, else the prompt is
        counted as 0 tokens and the reply as one token per streamed chunk.
        Raises ``ProviderError`` (see ``agent.providers.cloud_errors``); a
        stream that ends without a finish reason is a retryable one.
        """
        if self._closed:
            raise ProviderError(self.provider, "the client is closed")
        errors = self._errors
        try:
            stream = await self._create(
                model=self.model,
                messages=wire_messages(messages),
                stream=True,
                **self._options,
                **wire_options(settings, tools, self._max_tokens_param),
            )
        except errors.catchable as exc:
            raise provider_error(self.provider, exc, errors) from None
        pieces = 0
        usage: _Usage | None = None
        finished = False
        try:
            async for chunk in stream:
                usage = _usage(chunk) or usage
                for choice in chunk.choices:
                    finished = finished or choice.finish_reason is not None
                    delta = choice.delta
                    if delta.content:
                        pieces += 1
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or ():
                        pieces += 1
                        name = call.function.name if call.function else None
                        arguments = call.function.arguments if call.function else None
                        yield ToolCallDelta(call.index, call.id or None, name, arguments or "")
        except errors.catchable as exc:
            raise provider_error(self.provider, exc, errors, mid_stream=pieces > 0) from None
        except json.JSONDecodeError:
            raise ProviderError(self.provider, "malformed stream data", retryable=True) from None
        finally:
            await stream.close()
        if not finished:
            raise ProviderError(
                self.provider, "stream ended before the reply was complete", retryable=True
            )
        yield UsageDelta(
            self.provider,
            self.model,
            usage.prompt_tokens if usage is not None else 0,
            usage.completion_tokens if usage is not None else pieces,
        )

    async def aclose(self) -> None:
        """Close the client and its connections; later ``stream`` calls fail. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._close()


# ----------------------------------------------------------------- OpenAI


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    """An OpenAI (or OpenAI-compatible) chat-completions endpoint."""

    api_key: str = field(repr=False)
    """Bearer key (never logged); servers that take no key accept any non-empty value."""
    model: str = "gpt-4.1-mini"
    base_url: str = "https://api.openai.com/v1"
    """Root of the API, up to and including ``/v1``."""
    timeout_s: float = 10.0
    """See ``client_options``."""
    provider: str = "openai"
    """Name in usage records and errors (e.g. ``"vllm"`` for a self-hosted server)."""
    max_tokens_param: MaxTokensParam = "max_completion_tokens"
    """How the reply limit is sent: OpenAI's current name, or ``"max_tokens"``
    for servers that only know the old one."""

    def __post_init__(self) -> None:
        check_endpoint(self)


class OpenAICompatibleLLM(ChatCompletionsLLM):
    """``ChatCompletionsLLM`` on the official ``openai`` SDK (``AsyncOpenAI``)."""

    def __init__(self, settings: OpenAISettings) -> None:
        from openai import AsyncOpenAI

        self.settings = settings
        client = AsyncOpenAI(**client_options(settings))
        super().__init__(
            client.chat.completions.create,
            client.close,
            provider=settings.provider,
            model=settings.model,
            errors=openai_errors(),
            max_tokens_param=settings.max_tokens_param,
        )
