"""llama.cpp's prompt prefix across turns: first-token time cold, warm, after a trim.

::

    .venv/bin/python -m bench.prefix_cache [--turns 6] [--repeats 3]

llama-cpp-python keeps the tokens it evaluated last and, on the next request,
evaluates only what follows the longest common token prefix. A call's
requests share the system message and the history, so each turn should pay
only for the newest messages. Measured with the real local model
(``LlamaLLM``, the agent's settings) on a conversation built like the
session's (``ChatHistory.context()``), first token of each request:

* **cold**: after an unrelated prompt (nothing shared but the BOS token);
* **warm**: the next turn of the conversation right after the previous
  reply (shared: system message, the history up to the previous reply);
* **preemptive -> confirmed**: a held reply's request on the pause's words,
  then the confirmed turn's request on the whole question (when the pause
  was mid-sentence: the request differs only in its last words);
* **trimmed_one**: the history dropped its oldest turn (``max_history_turns``
  reached, ``history_trim_turns: 1``): only the system message is shared, and
  so on every turn from then on;
* **after_block_trim**: the turn after a trim of ``--trim-turns`` turns at once
  (``llm.history_trim_turns``): the prefix is warm again until the next trim.

It also checks the layout: the rendered system message (with the tool prompt
when tools are offered) is byte-identical from one turn to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Sequence

from agent.config import AgentConfig
from agent.history import ChatHistory
from agent.llm import ChatMessage, ToolSpec
from agent.providers.llama import LlamaLLM, LlamaSettings, render_messages, with_tool_prompt
from agent.providers.llama_tools import tool_prompt

QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Who wrote Romeo and Juliet?",
    "What colour is the sky on a clear day?",
    "How many days are in a leap year?",
    "What is the largest ocean on Earth?",
    "What do bees make?",
)
SEARCH = ToolSpec(
    "search_music",
    "Search the music library.",
    {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)


async def first_token(
    llm: LlamaLLM, config: AgentConfig, messages: Sequence[ChatMessage]
) -> tuple[float, str]:
    """Seconds to the first text piece, and the whole reply."""
    t0 = time.perf_counter()
    first: float | None = None
    text = ""
    settings = config.llm.generation()
    async with contextlib.aclosing(llm.stream(messages, settings)) as deltas:
        async for delta in deltas:
            piece = getattr(delta, "text", "")
            if piece and first is None:
                first = time.perf_counter() - t0
            text += piece
    return (first if first is not None else time.perf_counter() - t0), text.strip()


def prompt_tokens(llm: LlamaLLM, messages: Sequence[ChatMessage]) -> int:
    """Tokens of the rendered system + history text (an estimate of the prompt)."""
    raw = "".join(m["content"] for m in render_messages(messages))
    return len(llm._llama.tokenize(raw.encode("utf-8"), add_bos=False))


async def measure(turns: int, repeats: int, trim_turns: int) -> dict[str, object]:
    """First-token times of each case (see the module doc), ``repeats`` runs each."""
    config = AgentConfig.load()
    llm = LlamaLLM(LlamaSettings(threads=config.llm.threads, seed=7))
    unrelated = [
        ChatMessage("system", "You translate words into French, one per line."),
        ChatMessage("user", "house, tree, river"),
    ]
    cases = ("cold", "warm", "preemptive_confirmed", "trimmed_one", "after_block_trim")
    rows: dict[str, list[float]] = {k: [] for k in cases}
    tokens: list[int] = []
    try:
        for _ in range(repeats):
            # room for one more turn: the measured request trims nothing
            history = ChatHistory(config.system_prompt, max_turns=turns + 1)
            for i in range(turns):
                history.add_user(QUESTIONS[i % len(QUESTIONS)])
                _, answer = await first_token(llm, config, history.context())
                history.add_assistant(answer)
            question = QUESTIONS[turns % len(QUESTIONS)]
            messages = history.context_with_user(question)
            tokens.append(prompt_tokens(llm, messages))
            # warm: the previous request was this conversation's last turn
            rows["warm"].append((await first_token(llm, config, messages))[0])
            # preemptive -> confirmed: the pause's words first, then the whole question
            head = " ".join(question.split()[:3])
            await first_token(llm, config, history.context_with_user(head))
            rows["preemptive_confirmed"].append((await first_token(llm, config, messages))[0])
            # cold: an unrelated prompt in between
            await first_token(llm, config, unrelated)
            rows["cold"].append((await first_token(llm, config, messages))[0])
            # trimmed: the same conversation held to ``turns`` turns drops its oldest one
            # for the next question (one turn at a time: every turn from then on)
            await first_token(llm, config, history.context())
            full = ChatHistory(config.system_prompt, max_turns=turns)
            full.restore(history.messages())
            rows["trimmed_one"].append(
                (await first_token(llm, config, full.context_with_user(question)))[0]
            )
            # block trim: the turn after a trim of ``trim_turns`` finds its prefix warm
            block = ChatHistory(config.system_prompt, max_turns=turns, trim_turns=trim_turns)
            block.restore(history.messages())
            block.add_user(question)  # trims trim_turns turns at once
            _, answer = await first_token(llm, config, block.context())
            block.add_assistant(answer)
            nxt = QUESTIONS[(turns + 1) % len(QUESTIONS)]
            rows["after_block_trim"].append(
                (await first_token(llm, config, block.context_with_user(nxt)))[0]
            )
        # layout: the system message (with the tool prompt) is the same text every turn
        history = ChatHistory(config.system_prompt, max_turns=turns)
        systems = set()
        for q in QUESTIONS[:3]:
            history.add_user(q)
            payload = with_tool_prompt(render_messages(history.context()), tool_prompt([SEARCH]))
            systems.add(payload[0]["content"])
            history.add_assistant("An answer.")
    finally:
        llm.close()
    return {
        "model": llm.model,
        "threads": config.llm.threads,
        "history_turns": turns,
        "trim_turns": trim_turns,
        "prompt_tokens_median": statistics.median(tokens),
        "first_token_ms": {
            k: {"median": round(statistics.median(v) * 1000), "runs": [round(x * 1000) for x in v]}
            for k, v in rows.items()
        },
        "system_message_identical_across_turns": len(systems) == 1,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--turns", type=int, default=6, help="history turns before the measured one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trim-turns", type=int, default=3, help="the block trim measured")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.turns, args.repeats, args.trim_turns)), indent=1))


if __name__ == "__main__":
    main()
