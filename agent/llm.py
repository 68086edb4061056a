"""Language-model provider interface and chat history types."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat history."""

    role: Role
    content: str
    interrupted: bool = False
    """For assistant messages: the caller cut the reply short and heard only ``content``."""


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
    """Streams a chat completion as text deltas.

    Cancelling the consuming task (or closing the iterator) must stop the
    generation promptly and free the model for the next request.
    """

    def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        """Yield the reply's text in pieces as they are generated."""
        ...
