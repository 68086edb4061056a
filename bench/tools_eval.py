"""How well the local model picks tools and their arguments under the tool grammar.

Run::

    .venv/bin/python -m bench.tools_eval [--model PATH] [--format call_or_say|call_or_text|both]
                                         [--json out.json]

36 spoken requests to a music assistant (play, pause, skip, add to a
playlist, like, list playlists) and 8 that need no tool, each with the tool
and arguments expected. Every request goes once through the local llama.cpp
model (default: SmolLM2-135M-Instruct), constrained by the grammar of
``agent.providers.llama_tools``, with the tool specs of the music tools.

Scored per request (arguments normalised: lower case, punctuation and the
words "the", "song", "track", "by", "playlist", "my" dropped; a query is right when it
holds every content word of the expected one):

* ``tool``: the right tool was called (for a no-tool request: no call);
* ``args``: the right tool with the right arguments;
* ``parsed``: the output was a call that fits its schema or words (the
  grammar's guarantee; anything else is a bug);
* ``false_action``: a no-tool request that triggered an action.

Also: latency per request (median, p90) and the score per tool. Prints JSON,
then a plain table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.llm import ChatMessage, GenerationSettings, TextDelta, ToolCallDelta, ToolSpec
from agent.providers.llama import LlamaLLM, LlamaSettings
from agent.providers.llama_tools import ToolFormat
from agent.schema import argument_errors

SYSTEM = (
    "You are Parley, a friendly voice assistant that controls the user's music. "
    "Answer in one short spoken sentence."
)


def _object(
    properties: dict[str, Any] | None = None, required: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties or {},
        "required": list(required),
        "additionalProperties": False,
    }


TOOLS = (
    ToolSpec(
        "play_track",
        "Search for a song and play it.",
        _object({"query": {"type": "string", "description": "song and artist"}}, ["query"]),
    ),
    ToolSpec("pause", "Pause the music.", _object()),
    ToolSpec("next_track", "Skip to the next song.", _object()),
    ToolSpec(
        "add_to_playlist",
        "Add the song that is playing to one of the user's playlists.",
        _object({"playlist": {"type": "string", "description": "playlist name"}}, ["playlist"]),
    ),
    ToolSpec("like_track", "Save the song that is playing to the liked songs.", _object()),
    ToolSpec("list_playlists", "List the user's playlists.", _object()),
)


@dataclass(frozen=True, slots=True)
class Case:
    """One request and what should come of it (``tool`` None: words, no call)."""

    text: str
    tool: str | None
    arguments: dict[str, str] = dataclasses.field(default_factory=dict)


CASES = (
    Case("play shape of you by ed sheeran", "play_track", {"query": "shape of you ed sheeran"}),
    Case("play bohemian rhapsody", "play_track", {"query": "bohemian rhapsody"}),
    Case("can you play hello by adele", "play_track", {"query": "hello adele"}),
    Case("put on blinding lights by the weeknd", "play_track", {"query": "blinding lights weeknd"}),
    Case("i want to hear dancing queen", "play_track", {"query": "dancing queen"}),
    Case("play some taylor swift", "play_track", {"query": "taylor swift"}),
    Case(
        "play billie jean by michael jackson",
        "play_track",
        {"query": "billie jean michael jackson"},
    ),
    Case("play the song yesterday by the beatles", "play_track", {"query": "yesterday beatles"}),
    Case("start playing wonderwall", "play_track", {"query": "wonderwall"}),
    Case("play bad guy", "play_track", {"query": "bad guy"}),
    Case("pause the music", "pause"),
    Case("pause", "pause"),
    Case("stop the music for a moment", "pause"),
    Case("hold on, pause this", "pause"),
    Case("please pause the song", "pause"),
    Case("skip this song", "next_track"),
    Case("next song please", "next_track"),
    Case("play the next track", "next_track"),
    Case("skip", "next_track"),
    Case("i don't like this one, skip it", "next_track"),
    Case("add this to my workout playlist", "add_to_playlist", {"playlist": "workout"}),
    Case("add this song to my chill playlist", "add_to_playlist", {"playlist": "chill"}),
    Case("put this track in my road trip playlist", "add_to_playlist", {"playlist": "road trip"}),
    Case("save this to the party playlist", "add_to_playlist", {"playlist": "party"}),
    Case("add it to favorites", "add_to_playlist", {"playlist": "favorites"}),
    Case("like this song", "like_track"),
    Case("i love this song, like it", "like_track"),
    Case("save this song to my liked songs", "like_track"),
    Case("heart this track", "like_track"),
    Case("like it", "like_track"),
    Case("what playlists do i have", "list_playlists"),
    Case("list my playlists", "list_playlists"),
    Case("show me my playlists", "list_playlists"),
    Case("which playlists have i made", "list_playlists"),
    Case("read me my playlists", "list_playlists"),
    Case("what are my playlists called", "list_playlists"),
    Case("what is the capital of france", None),
    Case("how are you today", None),
    Case("tell me a joke", None),
    Case("what time is it in tokyo", None),
    Case("who wrote romeo and juliet", None),
    Case("thank you", None),
    Case("what's the weather like", None),
    Case("how many legs does a spider have", None),
)

_DROP = frozenset({"the", "song", "track", "by", "playlist", "my", "a", "some", "to", "please"})


def words(text: str) -> set[str]:
    """Content words of an argument (normalised)."""
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _DROP}


def arguments_match(expected: dict[str, str], got: dict[str, Any]) -> bool:
    """Every expected argument's content words are in what the model gave."""
    for name, value in expected.items():
        given = got.get(name)
        if not isinstance(given, str) or not words(value) <= words(given):
            return False
    return True


@dataclass(slots=True)
class Outcome:
    """What the model did with one case."""

    case: Case
    tool: str | None
    arguments: dict[str, Any]
    text: str
    parsed: bool
    seconds: float

    @property
    def right_tool(self) -> bool:
        return self.tool == self.case.tool

    @property
    def right_args(self) -> bool:
        return self.right_tool and arguments_match(self.case.arguments, self.arguments)


async def run_case(llm: LlamaLLM, case: Case, seed: int) -> Outcome:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", case.text)]
    settings = GenerationSettings(max_tokens=60, temperature=0.2, seed=seed)
    schemas = {t.name: t.parameters for t in TOOLS}
    started = time.perf_counter()
    deltas = [d async for d in llm.stream(messages, settings, TOOLS)]
    seconds = time.perf_counter() - started
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    if not calls:
        return Outcome(case, None, {}, text, bool(text.strip()), seconds)
    call = calls[0]
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError:
        return Outcome(case, call.name, {}, text, False, seconds)
    parsed = (
        len(calls) == 1
        and call.name in schemas
        and isinstance(arguments, dict)
        and not argument_errors(schemas[call.name], arguments)
    )
    return Outcome(
        case, call.name, arguments if isinstance(arguments, dict) else {}, text, parsed, seconds
    )


def summarize(fmt: str, outcomes: list[Outcome]) -> dict[str, Any]:
    tool_cases = [o for o in outcomes if o.case.tool is not None]
    chat_cases = [o for o in outcomes if o.case.tool is None]
    latencies = sorted(o.seconds for o in outcomes)
    per_tool: dict[str, str] = {}
    for spec in TOOLS:
        mine = [o for o in tool_cases if o.case.tool == spec.name]
        per_tool[spec.name] = f"{sum(o.right_tool for o in mine)}/{len(mine)}"
    return {
        "format": fmt,
        "requests": len(outcomes),
        "tool_requests": len(tool_cases),
        "right_tool": sum(o.right_tool for o in tool_cases),
        "right_args": sum(o.right_args for o in tool_cases),
        "no_tool_requests": len(chat_cases),
        "answered_in_words": sum(o.tool is None for o in chat_cases),
        "false_action": sum(o.tool is not None for o in chat_cases),
        "parsed": sum(o.parsed for o in outcomes),
        "latency_median_s": round(statistics.median(latencies), 2),
        "latency_p90_s": round(latencies[int(0.9 * (len(latencies) - 1))], 2),
        "per_tool_right": per_tool,
        "outputs": [
            {"request": o.case.text, "tool": o.tool, "arguments": o.arguments, "text": o.text[:80]}
            for o in outcomes
        ],
    }


async def evaluate(model: Path | None, formats: Sequence[ToolFormat]) -> list[dict[str, Any]]:
    out = []
    for fmt in formats:
        llm = LlamaLLM(LlamaSettings(model_path=model, tool_format=fmt))
        try:
            outcomes = [await run_case(llm, case, seed=i) for i, case in enumerate(CASES)]
        finally:
            await llm.aclose()
        out.append(summarize(fmt, outcomes))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default SmolLM2)")
    parser.add_argument("--format", choices=["call_or_say", "call_or_text", "both"], default="both")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    formats: list[ToolFormat] = (
        ["call_or_say", "call_or_text"] if args.format == "both" else [args.format]
    )
    results = asyncio.run(evaluate(args.model, formats))
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    print()
    print(
        f"{'format':<14}{'right tool':>12}{'right args':>12}{'words (no-tool)':>17}"
        f"{'false action':>14}{'parsed':>9}{'median s':>10}{'p90 s':>8}"
    )
    for r in results:
        n = r["tool_requests"]
        print(
            f"{r['format']:<14}{r['right_tool']:>7}/{n:<4}{r['right_args']:>7}/{n:<4}"
            f"{r['answered_in_words']:>12}/{r['no_tool_requests']:<4}"
            f"{r['false_action']:>10}/{r['no_tool_requests']:<3}"
            f"{r['parsed']:>5}/{r['requests']:<3}{r['latency_median_s']:>10}{r['latency_p90_s']:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
