"""The reply loop: model requests with rounds of tool calls between them.

One reply is a sequence of steps. Each step streams the model's answer to
the conversation so far: its text goes to the ``Speaker`` as it comes (a
voice reply speaks it, the text chat collects it), its tool-call fragments
are assembled. A step that ends with calls runs them as one round (in
parallel, in one ``TaskGroup``), appends the calls and their results to the
conversation and asks again; a step without calls ends the reply. At most
``max_steps`` rounds run; the request after the last one offers no tools,
so a reply always ends in words.

Rules of a round:

* No tool runs while the caller may be interrupting (``ToolUse.may_act``
  waits while a barge-in is pending), and none runs before its reply was
  asked for: calls only come from a reply to a finished user turn.
* Calls are checked before they run (``ToolRegistry.prepare``): an unknown
  tool, arguments that are not JSON or do not fit the schema become failed
  results the model reads in the next step ("query: expected a string"), so
  it can ask again; if it never answers in words after such a failure, the
  speaker says the failure's own message where the caller may hear it (a
  tool's ``ToolError``: "your Spotify account isn't connected; link it in
  the app"), else the configured clarification. A call repeated with the same
  arguments within one reply is not run twice (small models loop).
* A round still running ``filler_after_s`` after it started, with nothing
  playing, makes the speaker say a filler (once per reply).
* Cancelling the reply (barge-in) cancels the calls of cancellable tools.
  Calls of tools that may not be cancelled run to the end first (within
  their time budget; ``abort()`` stops them when the session closes); the
  round is then handed to ``on_late_round`` so its completed actions still
  enter the history (where the reply was committed, before anything the
  caller said since: ``agent.replies``), and the cancellation goes on.

Every call is announced with a ``ToolCallEvent`` and ends with a
``ToolResultEvent`` (cancelled ones included). The loop keeps what the
history needs: per step the model's text and the completed round
(``commit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.events import AgentEvent, ToolCallEvent, ToolResultEvent
from agent.history import ChatHistory
from agent.llm import (
    LLM,
    ChatMessage,
    GenerationSettings,
    ToolCall,
    ToolCallAssembler,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.tools import Tool, ToolContext, ToolRegistry, ToolResult, execute
from agent.turnclock import TurnClock

UNNAMED = "(no name)"
"""The name given to a call the model never named (reported as an unknown tool)."""

FILLER_POLL_S = 0.02
"""How often a due filler checks whether the line went quiet (one playout frame)."""


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """How replies use tools (the agent YAML's ``tools`` section)."""

    max_steps: int = 3
    """Rounds of tool calls per reply."""
    filler_after_s: float = 0.4
    filler: str = "One moment."
    clarification: str = "Sorry, I didn't understand that. Could you say it another way?"


class Speaker(Protocol):
    """Where a reply's words go: spoken (``agent.reply``) or collected (text chat)."""

    async def say(self, text: str, step: int, *, filler: bool = False) -> None:
        """Model text as it streams, or a canned text (``filler``: not for the history)."""
        ...

    async def end_step(self, step: int) -> None:
        """A step's text is complete and a tool round follows: speak what is pending."""
        ...

    def idle(self) -> bool:
        """Whether nothing is being said right now (a filler may be)."""
        ...


class TextSpeaker:
    """The ``Speaker`` of a reply that is read, not heard (text chat): it collects the
    words; fillers are left out (nothing waits in silence)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        """Everything said, as one text."""
        return "".join(self.parts).strip()

    async def say(self, text: str, step: int, *, filler: bool = False) -> None:
        """Keep the words (not a filler)."""
        if not filler:
            self.parts.append(text)

    async def end_step(self, step: int) -> None:
        """Nothing is pending: text is not spoken."""
        return None

    def idle(self) -> bool:
        """Never idle: a text reply needs no filler."""
        return False


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The tools a reply may call and how (built by the session for each reply)."""

    registry: ToolRegistry
    settings: ToolSettings
    context: ToolContext
    may_act: Callable[[], Awaitable[object]] | None = None
    """Returns when tools may run (waits while a barge-in is pending)."""
    on_late_round: Callable[[ToolRound], None] | None = None
    """Told of a round that finished after the reply was interrupted, when some of
    its calls completed (its results belong in the history)."""


@dataclass(slots=True)
class ToolRound:
    """The calls of one step and their results, by call id."""

    step: int
    calls: list[ToolCall]
    results: dict[str, ToolResult] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every call has its result."""
        return all(c.id in self.results for c in self.calls)

    @property
    def failed(self) -> bool:
        """Whether any call failed."""
        return any(r.error for r in self.results.values())

    def contents(self) -> dict[str, str]:
        """What the model reads of each result, by call id."""
        return {c.id: self.results[c.id].content for c in self.calls}

    def messages(self, text: str) -> list[ChatMessage]:
        """The assistant message with the calls, then one tool message per result."""
        out = [ChatMessage("assistant", text, tool_calls=tuple(self.calls))]
        out += [
            ChatMessage("tool", self.results[c.id].content, tool_call_id=c.id, name=c.name)
            for c in self.calls
        ]
        return out


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The last action a reply completed (the chat API's ``action_result``)."""

    tool: str
    action: str
    data: Mapping[str, object]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"tool": self.tool, "action": self.action, "data": dict(self.data)}


class ToolLoop:
    """Runs one reply's steps (see the module doc); one instance per reply."""

    def __init__(
        self,
        llm: LLM,
        generation: GenerationSettings,
        clock: TurnClock,
        *,
        tools: ToolUse | None,
        offer: Sequence[ToolSpec],
        emit: Callable[[AgentEvent], None],
    ) -> None:
        self._llm = llm
        self._generation = generation
        self._clock = clock
        self._use = tools
        self._offer = tuple(offer) if tools is not None else ()
        self._emit = emit
        self.texts: list[str] = []
        """The words of each step (model text and the clarification; fillers left out)."""
        self.rounds: list[ToolRound] = []
        """Rounds that completed while the reply ran."""
        self.in_flight: ToolRound | None = None
        """The round running now (or cut short by an interruption)."""
        self.calls: list[ToolCall] = []
        """Every call the model asked for, in order."""
        self.raw: list[dict[str, object]] = []
        """Per step, what the model produced: its text and calls as written."""
        self.filler_said = False
        self._done: dict[tuple[str, str], ToolResult] = {}
        self._ids: set[str] = set()
        self._actions: set[asyncio.Task[ToolResult]] = set()

    @property
    def acting(self) -> bool:
        """Whether a round is still running (its results are not in the history yet)."""
        return self.in_flight is not None

    def abort(self) -> None:
        """Stop the actions that barge-in may not cancel (the session is closing)."""
        for action in self._actions:
            action.cancel()

    @property
    def used_tools(self) -> bool:
        """Whether the model called any tool in this reply."""
        return bool(self.calls)

    def action_result(self) -> ActionResult | None:
        """The last action completed (a successful result with an ``action``)."""
        for round_ in reversed(self.rounds):
            for call in reversed(round_.calls):
                result = round_.results.get(call.id)
                if result is not None and not result.error and result.action:
                    return ActionResult(call.name, result.action, result.data)
        return None

    # ------------------------------------------------------------------ steps

    async def run(self, messages: Sequence[ChatMessage], speaker: Speaker) -> None:
        """Ask, run rounds, ask again, until the model answers in words (or rounds run out)."""
        context = list(messages)
        use = self._use
        max_steps = use.settings.max_steps if use is not None else 0
        for step in range(max_steps + 1):
            offer = self._offer if step < max_steps else ()
            text, calls = await self._ask(step, context, offer, speaker)
            if not calls or use is None:
                break
            await speaker.end_step(step)
            round_ = await self._run_round(step, calls, speaker, use)
            self.rounds.append(round_)
            self.in_flight = None
            context += round_.messages(text)
        if use is not None and not self.texts[-1].strip():
            words = self._closing_words(use.settings)
            if words is not None:
                await self._say(speaker, len(self.texts) - 1, words)

    def _closing_words(self, settings: ToolSettings) -> str | None:
        """What to say when the model ended silent: after a failed round, the failure's own
        message where the caller may hear it ("your Spotify account isn't connected; link
        it in the app"), else the clarification (an unusable call, or calls asked for
        past the limit); None when nothing failed."""
        last = self.raw[-1] if self.raw else {}
        failed = bool(self.rounds) and self.rounds[-1].failed
        if not failed and not last.get("tool_calls"):
            return None
        if failed:
            round_ = self.rounds[-1]
            for call in round_.calls:
                result = round_.results.get(call.id)
                if result is not None and result.error and result.spoken:
                    return _sentence(result.spoken)
        return settings.clarification

    async def _say(self, speaker: Speaker, step: int, text: str) -> None:
        if self.texts[step] and not self.texts[step][-1].isspace():
            text = " " + text
        self.texts[step] += text
        await speaker.say(text, step)

    async def _ask(
        self,
        step: int,
        messages: Sequence[ChatMessage],
        offer: Sequence[ToolSpec],
        speaker: Speaker,
    ) -> tuple[str, list[ToolCall]]:
        clock = self._clock
        if clock.llm_start is None:
            clock.llm_start = time.monotonic()
        self.texts.append("")
        fragments = ToolCallAssembler()
        stream = self._llm.stream(messages, self._generation, offer)
        async with contextlib.aclosing(stream) as deltas:
            async for delta in deltas:
                if isinstance(delta, UsageDelta):
                    usage = clock.usage
                    usage.llm_provider, usage.llm_model = delta.provider, delta.model
                    usage.prompt_tokens += delta.prompt_tokens
                    usage.completion_tokens += delta.completion_tokens
                    continue
                if clock.llm_first_token is None:
                    clock.llm_first_token = time.monotonic()
                clock.llm_tokens += 1
                if isinstance(delta, ToolCallDelta):
                    fragments.feed(delta)
                    continue
                if not delta.text:
                    continue
                piece = delta.text
                if step and not self.texts[step] and not piece[0].isspace():
                    piece = " " + piece  # a new step's words follow the last ones
                self.texts[step] += piece
                await speaker.say(piece, step)
        text = self.texts[step]
        calls = [self._unique(c) for c in fragments.calls(unnamed=UNNAMED)]
        self.raw.append(
            {
                "text": text.strip(),
                "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls],
            }
        )
        if not offer:
            return text, []  # calls past the limit (or never offered) are not run
        self.calls += calls
        return text, calls

    def _unique(self, call: ToolCall) -> ToolCall:
        """The call with an id no other call of this reply has (providers may repeat ids)."""
        call_id = call.id
        if not call_id or call_id in self._ids:
            call_id = "call_" + secrets.token_hex(6)
        self._ids.add(call_id)
        return call if call_id == call.id else ToolCall(call_id, call.name, call.arguments)

    # ------------------------------------------------------------------ rounds

    async def _run_round(
        self, step: int, calls: list[ToolCall], speaker: Speaker, use: ToolUse
    ) -> ToolRound:
        round_ = ToolRound(step, calls)
        self.in_flight = round_
        turn_id = use.context.turn_id
        for call in calls:
            self._emit(ToolCallEvent(turn_id, call.id, call.name, call.arguments, step))
        filler: asyncio.Task[None] | None = None
        try:
            if use.may_act is not None:
                await use.may_act()
            started = time.monotonic()
            if not self.filler_said:
                text = self._filler_text(calls, use)
                filler = asyncio.create_task(
                    self._filler_later(speaker, step, text, use.settings.filler_after_s),
                    name="tool-filler",
                )
            async with asyncio.TaskGroup() as group:
                for call in calls:
                    group.create_task(
                        self._run_call(round_, call, use, started), name=f"tool:{call.name}"
                    )
        except asyncio.CancelledError:
            self._cancelled(round_, use)
            raise
        finally:
            if filler is not None:
                filler.cancel()
                await asyncio.gather(filler, return_exceptions=True)
        return round_

    def _cancelled(self, round_: ToolRound, use: ToolUse) -> None:
        """The reply was cancelled during a round: every call gets a result, and a round
        with completed calls goes to the history through ``on_late_round``."""
        for call in round_.calls:
            if call.id not in round_.results:
                result = ToolResult.failure("cancelled", "the caller interrupted")
                round_.results[call.id] = result
                self._emit_result(use, call, result, 0.0, late=True)
        completed = any(r.code != "cancelled" for r in round_.results.values())
        if completed and use.on_late_round is not None:
            use.on_late_round(round_)

    def _filler_text(self, calls: list[ToolCall], use: ToolUse) -> str:
        for call in calls:
            tool = use.registry.get(call.name)
            if tool is not None and tool.filler:
                return tool.filler
        return use.settings.filler

    async def _filler_later(self, speaker: Speaker, step: int, text: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        # The playout buffer has no "drained" signal; one check per frame is cheap.
        while not speaker.idle():  # noqa: ASYNC110
            await asyncio.sleep(FILLER_POLL_S)
        self.filler_said = True
        await speaker.say(text, step, filler=True)

    async def _run_call(
        self, round_: ToolRound, call: ToolCall, use: ToolUse, started: float
    ) -> None:
        prepared = use.registry.prepare(call)
        if isinstance(prepared, ToolResult):
            result = prepared
        else:
            tool, arguments = prepared
            key = (tool.name, json.dumps(arguments, sort_keys=True))
            earlier = self._done.get(key)
            if earlier is not None:
                note = f"{earlier.content} (already done in this turn; not repeated)"
                result = ToolResult(note, None, earlier.data)
            elif tool.cancellable:
                result = await execute(tool, arguments, use.context)
            else:
                result = await self._run_protected(round_, call, tool, arguments, use, started)
            if not result.error and earlier is None:
                self._done[key] = result
        round_.results[call.id] = result
        self._emit_result(use, call, result, time.monotonic() - started, late=False)

    async def _run_protected(
        self,
        round_: ToolRound,
        call: ToolCall,
        tool: Tool,
        arguments: dict[str, object],
        use: ToolUse,
        started: float,
    ) -> ToolResult:
        """Run a tool barge-in may not cancel: a cancellation waits for the result
        (recorded, then the cancellation goes on); ``abort()`` stops it."""
        action = asyncio.create_task(
            execute(tool, dict(arguments), use.context), name=f"tool-action:{tool.name}"
        )
        self._actions.add(action)
        try:
            try:
                return await asyncio.shield(action)
            except asyncio.CancelledError:
                result = await action
                round_.results[call.id] = result
                self._emit_result(use, call, result, time.monotonic() - started, late=True)
                raise
        finally:
            self._actions.discard(action)
            if not action.done():
                action.cancel()
                await asyncio.gather(action, return_exceptions=True)

    def _emit_result(
        self, use: ToolUse, call: ToolCall, result: ToolResult, seconds: float, *, late: bool
    ) -> None:
        self._emit(
            ToolResultEvent(
                turn_id=use.context.turn_id,
                call_id=call.id,
                name=call.name,
                ok=not result.error,
                code=result.code,
                action=None if result.error else result.action,
                content=result.content,
                data=dict(result.data),
                duration_ms=round(seconds * 1000, 1),
                late=late,
            )
        )

    # ------------------------------------------------------------------ history

    def commit(
        self,
        history: ChatHistory,
        heard: Mapping[int, str] | None = None,
        *,
        interrupted: bool = False,
    ) -> None:
        """Write the reply into ``history``: per step its words (as heard: ``heard`` maps
        steps to what the caller heard, None for all of it) and its completed round.

        A round still in flight is left to ``on_late_round``; an interrupted step's
        words are flagged ``interrupted``.
        """
        rounds = {r.step: r for r in self.rounds}
        for step, full in enumerate(self.texts):
            text = (full if heard is None else heard.get(step, "")).strip()
            cut = interrupted and heard is not None and _words(text) != _words(full)
            round_ = rounds.get(step)
            if round_ is not None:
                history.add_tool_exchange(round_.calls, round_.contents(), text=text)
            else:
                history.add_assistant(text, interrupted=cut)


def _sentence(text: str) -> str:
    """``text`` as a sentence said on its own: capitalized, with a full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'").lower() for w in text.split()]
