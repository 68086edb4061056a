"""The text end-of-turn model: do the caller's words so far read like a finished turn?

When the caller pauses, the listener already transcribes the utterance
(the speculative final, ``turn.speculative_stt``). ``TextEndOfTurn`` reads
that transcript, without its punctuation, with a small chat language model,
and returns the probability that the model's next token ends the sentence
or the message: a full stop, a question or exclamation mark, or ChatML's
end-of-message marker ``<|im_end|>``. That is the model's own estimate that
the caller's words so far are complete: "what is the capital of" scores
7e-5, "what is the capital of france" 0.73; "set it for" 1e-3, "set it for
seven thirty" 0.2. The idea is LiveKit's turn detector's (a fine-tuned
SmolLM reading the end-of-message probability); here the model is the
stock SmolLM2-135M-Instruct already shipped as the default LLM, so nothing
is downloaded. A stock model rarely ends a message without its final
punctuation, so the end marker alone is badly calibrated (1e-8 to 1e-2 for
finished turns); with the sentence ends counted it separates finished from
unfinished turns by one to three orders of magnitude.

What the model reads: the agent's last words (the question the caller may
be answering: "John" finishes "What is your name?"), cut to their last
``context_chars`` characters at a word boundary, then the caller's words.
The text is normalised: lower case, no punctuation. Whisper puts a full
stop or a question mark after almost anything it transcribes, even "what is
the capital of." at a pause, so a sentence end of the transcript says
little (with punctuation kept, the model separated finished from unfinished
turns far worse: ``bench/end_of_turn.py``). The exception is punctuation
that says the caller goes on: a transcript that ends with a comma, a colon,
a dash or an ellipsis ("press 1 for sales," "not really, but...") is what
Whisper makes of a voice that did not fall at the pause, so the words are
read with a trailing comma, after which the model rarely expects an end.

Cost: the prompt is evaluated once per check on one thread; consecutive
checks share their prefix (the context), so only the caller's words are
evaluated again: ~15-40 ms for a sentence on this project's 2-core machine.
The instance holds its own ``llama.cpp`` context (the chat LLM's KV cache is
never disturbed); the weights file is memory-mapped, so a second context on
the same GGUF costs its buffers, not the weights again. It is blocking and
not thread-safe: the session runs it on the end-of-turn model's single
inference thread (``AgentModels.end_of_turn_executor``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.errors import ModelLoadError

if TYPE_CHECKING:
    from llama_cpp import Llama

_PROVIDER = "text-turn"

END_MARKER = "<|im_end|>"
"""ChatML's end of a message."""

SENTENCE_ENDS = (".", "?", "!")
"""Tokens that end a sentence: with the end marker, their probability is the score."""

N_CTX = 512
"""Context of the scorer: the agent's context and the caller's words fit in it."""

MAX_WORDS_CHARS = 600
"""The caller's words the model reads (their end: the part that decides)."""

_NOT_WORD = re.compile(r"[^\w\s']+")
_GOES_ON = re.compile(r"(?:[,;:\u2013\u2014-]|\.\.|\u2026)\s*$")
"""A transcript ending like this was heard going on (comma, colon, dash, ellipsis)."""
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept), single spaces."""
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", text.lower())).strip()


def _tail(text: str, chars: int) -> str:
    """The last ``chars`` characters of ``text``, cut at a word boundary."""
    if len(text) <= chars:
        return text
    cut = text[-chars:]
    space = cut.find(" ")
    return cut[space + 1 :] if 0 <= space < len(cut) - 1 else cut


class TextEndOfTurn:
    """A ChatML language model's probability that the caller's message is complete."""

    def __init__(
        self, model_path: Path | None = None, *, context_chars: int = 200, threads: int = 1
    ) -> None:
        """Load the GGUF at ``model_path`` (default: SmolLM2-135M-Instruct, the default
        LLM's file). ``ModelLoadError`` when it is missing, cannot be loaded, or has no
        single ChatML end-of-message token."""
        from llama_cpp import Llama

        from agent.providers.llama import default_gguf_path

        path = model_path or default_gguf_path()
        if not path.is_file():
            raise ModelLoadError(_PROVIDER, f"GGUF model missing at {path}")
        try:
            self._llama: Llama = Llama(
                model_path=str(path),
                n_ctx=N_CTX,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except Exception as exc:
            raise ModelLoadError(_PROVIDER, f"cannot load {path.name}: {exc}") from exc
        marker = self._llama.tokenize(END_MARKER.encode(), add_bos=False, special=True)
        if len(marker) != 1:
            self._llama.close()
            raise ModelLoadError(
                _PROVIDER, f"{path.name} has no single {END_MARKER} token: it needs a ChatML model"
            )
        ends = {marker[0]}
        for mark in SENTENCE_ENDS:
            token = self._llama.tokenize(mark.encode(), add_bos=False, special=False)
            if len(token) == 1:
                ends.add(token[0])
        self._ends = sorted(ends)
        self._vocab = self._llama.n_vocab()
        self._evaluated: list[int] = []
        self.context_chars = context_chars
        self.path = path

    def prompt(self, words: str, agent_said: str = "") -> str:
        """What the model reads: the agent's last words, then the caller's (unfinished)
        message, normalised; the score is the next token's."""
        context = _tail(normalize(agent_said), self.context_chars)
        said = f"<|im_start|>assistant\n{context}{END_MARKER}\n" if context else ""
        goes_on = "," if _GOES_ON.search(words) else ""
        return f"{said}<|im_start|>user\n{_tail(normalize(words), MAX_WORDS_CHARS)}{goes_on}"

    def score_text(self, words: str, agent_said: str = "") -> float:
        """Probability in 0..1 that ``words`` (what the caller said so far) end a
        sentence or the caller's message; blocking (run it on the end-of-turn thread).
        No words: 0."""
        if not normalize(words):
            return 0.0
        tokens = self._llama.tokenize(
            self.prompt(words, agent_said).encode(), add_bos=False, special=True
        )
        logits = self._evaluate(tokens)
        top = float(logits.max())
        weights = np.exp(logits - top)
        return min(1.0, float(weights[self._ends].sum() / weights.sum()))

    def _evaluate(self, tokens: list[int]) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        """The logits after ``tokens``; the prefix shared with the last prompt is kept in
        the KV cache and only the rest is evaluated."""
        import llama_cpp

        llama = self._llama
        keep = 0
        for old, new in zip(self._evaluated, tokens[:-1], strict=False):
            if old != new:
                break
            keep += 1
        llama.n_tokens = keep  # eval() drops the cache past it
        self._evaluated = []  # unknown until the evaluation succeeds
        llama.eval(tokens[keep:])
        self._evaluated = list(tokens)
        pointer = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._vocab,)).astype(np.float64)

    def close(self) -> None:
        """Free the model (idempotent); call it on the thread that runs ``score_text``."""
        self._llama.close()
