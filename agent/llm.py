"""Language-model provider interface: chat messages, tool specs and streamed deltas.

An LLM streams a union of ``TextDelta`` (reply text), ``ToolCallDelta``
(fragments of a tool call: the first fragment of a call carries its id and
name, later ones append to its JSON arguments) and, once at the end,
``UsageDelta`` (who served the reply and how many tokens it took). ``ToolCallAssembler`` turns
the fragments into complete ``ToolCall``s. Chat messages carry the tool calls
an assistant made and the results the tools gave, so a history can replay
them to the model (tool execution itself lives in the reply loop).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and its JSON-schema parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI-style ``tools`` entry (used by llama.cpp, Groq and OpenAI clients)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete call the model asked for; ``arguments`` is the JSON object as text."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; ``ValueError`` when they are not a JSON object."""
        try:
            value = json.loads(self.arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool call {self.name!r}: arguments are not JSON") from exc
        if not isinstance(value, dict):
            raise ValueError(f"tool call {self.name!r}: arguments must be a JSON object")
        return value


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat history.

    ``role="assistant"`` messages may hold ``tool_calls``; ``role="tool"``
    messages hold a tool's result in ``content`` and name the call they
    answer in ``tool_call_id``.
    """

    role: Role
    content: str
    interrupted: bool = False
    """For assistant messages: the caller cut the reply short and heard only ``content``."""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    """For tool messages: the tool's name."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of tool call number ``index`` of this reply.

    The first fragment of a call carries ``id`` and ``name``; every fragment
    may carry a piece of the JSON ``arguments`` text.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What serving the reply took, reported once at the end of a stream.

    ``provider`` names the service that answered (``"local"``, ``"groq"``,
    ``"openai"``), ``model`` its model; token counts are the vendor's own when
    it reports them, else the adapter's count.
    """

    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


LLMDelta = TextDelta | ToolCallDelta | UsageDelta


class ToolCallAssembler:
    """Collects ``ToolCallDelta`` fragments into complete ``ToolCall``s, in index order."""

    def __init__(self) -> None:
        self._parts: dict[int, tuple[str, str, list[str]]] = {}

    def feed(self, delta: ToolCallDelta) -> None:
        """Add one fragment."""
        call_id, name, args = self._parts.get(delta.index, ("", "", []))
        if delta.id:
            call_id = delta.id
        if delta.name:
            name = delta.name
        args.append(delta.arguments)
        self._parts[delta.index] = (call_id, name, args)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def calls(self, unnamed: str | None = None) -> list[ToolCall]:
        """The calls collected so far.

        A call that never got a name raises ``ValueError``, or is named
        ``unnamed`` when that is given (the reply loop reports it to the model).
        """
        out: list[ToolCall] = []
        for index in sorted(self._parts):
            call_id, name, args = self._parts[index]
            if not name and unnamed is not None:
                name = unnamed
            if not name:
                raise ValueError(f"tool call #{index} has no name")
            out.append(ToolCall(call_id or f"call_{index}", name, "".join(args) or "{}"))
        return out


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Sampling settings passed to an LLM."""

    max_tokens: int = 120
    temperature: float = 0.4
    top_p: float = 0.9
    repeat_penalty: float = 1.15
    seed: int | None = None


@runtime_checkable
class LLM(Protocol):
    """Streams a chat completion as text and tool-call deltas.

    Cancelling the consuming task (or closing the iterator) must stop the
    generation promptly and free the model for the next request; a request
    still waiting for the model must leave its queue at once.
    """

    model: str
    """Name of the model, for metrics and logs."""

    def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        """Yield the reply in pieces as they are generated."""
        ...

    async def aclose(self) -> None:
        """Release the provider (threads, connections); idempotent."""
        ...


async def stream_text(
    llm: LLM, messages: Sequence[ChatMessage], settings: GenerationSettings
) -> AsyncGenerator[str, None]:
    """Only the text of a reply (for callers that offer no tools)."""
    stream = llm.stream(messages, settings)
    try:
        async for delta in stream:
            if isinstance(delta, TextDelta) and delta.text:
                yield delta.text
    finally:
        await stream.aclose()
