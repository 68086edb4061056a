"""Turns a session's events into durable store writes (never blocking the call)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

from agent.events import (
    AgentEvent,
    DtmfEvent,
    ErrorEvent,
    MetricsEvent,
    ReplyEvent,
    ToolCallEvent,
    ToolResultEvent,
    TranscriptEvent,
)
from agent.history import ChatHistory
from agent.llm import ChatMessage, ToolCall
from agent.pricing import PriceTable
from store.repositories import TurnRecord
from store.store import Store
from store.writer import InteractionLogged, SessionEnded, SessionErrored, SessionStarted

log = logging.getLogger(__name__)

_LATENCY_FIELDS = (
    "voice_to_voice_ms",
    "end_of_turn_ms",
    "stt_final_ms",
    "stt_wait_ms",
    "llm_first_token_ms",
    "tts_first_audio_ms",
    "reply_first_audio_ms",
)


def messages_to_json(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Chat messages as the store keeps them (tool calls and results included)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content, "interrupted": m.interrupted}
        if m.tool_calls:
            item["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            item["name"] = m.name
        out.append(item)
    return out


def messages_from_json(data: list[dict[str, Any]]) -> list[ChatMessage]:
    """Chat messages from the store's JSON (malformed entries and unknown roles are skipped)."""
    out: list[ChatMessage] = []
    for m in data:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            continue
        role = m.get("role")
        interrupted = bool(m.get("interrupted", False))
        if role == "user":
            out.append(ChatMessage("user", m["content"]))
        elif role == "assistant":
            calls = tuple(
                ToolCall(str(c["id"]), str(c["name"]), str(c.get("arguments", "{}")))
                for c in m.get("tool_calls") or ()
                if isinstance(c, dict) and c.get("id") and c.get("name")
            )
            out.append(ChatMessage("assistant", m["content"], interrupted, tool_calls=calls))
        elif role == "tool" and isinstance(m.get("tool_call_id"), str):
            name = m.get("name")
            out.append(
                ChatMessage(
                    "tool",
                    m["content"],
                    tool_call_id=m["tool_call_id"],
                    name=name if isinstance(name, str) else None,
                )
            )
    return out


def tool_interaction(
    reply_text: str, calls: list[ToolCallEvent], results: list[ToolResultEvent]
) -> tuple[str, str]:
    """The interaction log's ``raw_llm_output`` and ``final_action`` of a turn that used tools.

    The raw output is JSON: the reply's words and every call as the model wrote
    it, with how it ended. The final action is the last action completed
    (``ToolResult.action``), else ``tool_error`` when a call failed, else
    ``tool_lookup`` (only read-only tools ran).
    """
    ended = {r.call_id: r for r in results}
    raw = {
        "text": reply_text,
        "tool_calls": [
            {
                "step": c.step,
                "name": c.name,
                "arguments": c.arguments,
                "ok": ended[c.call_id].ok if c.call_id in ended else None,
                "code": ended[c.call_id].code if c.call_id in ended else None,
            }
            for c in calls
        ],
    }
    actions = [action for r in results if r.ok and (action := r.action)]
    if actions:
        final = actions[-1]
    elif any(not r.ok for r in results):
        final = "tool_error"
    else:
        final = "tool_lookup"
    return json.dumps(raw, ensure_ascii=False), final


_UNPRICED_WARNINGS_MAX = 256
_unpriced_warned: set[tuple[str, str, str | None]] = set()
"""Stage, provider and model already warned about (bounded: names come from configuration)."""


def priced_usage(usage: Mapping[str, Any], prices: PriceTable | None) -> dict[str, Any] | None:
    """A turn's usage as the store keeps it: with ``cost_usd`` and ``cost_by_stage``
    filled from ``prices`` when the agent left the cost unset.

    None when the event carried no usage. A cost the agent set is kept as is
    (and no per-stage split is added). Stages without a price are logged once.
    """
    if not usage:
        return None
    out = dict(usage)
    if prices is None or out.get("cost_usd") is not None:
        return out
    out["cost_by_stage"] = prices.cost_by_stage(usage)
    out["cost_usd"] = prices.cost(usage)
    for use in prices.unpriced(usage):
        key = (use.stage, use.provider, use.model)
        if key not in _unpriced_warned and len(_unpriced_warned) < _UNPRICED_WARNINGS_MAX:
            _unpriced_warned.add(key)
            log.warning(
                "no price for %s provider %r (model %r): left out of cost estimates",
                use.stage,
                use.provider,
                use.model,
            )
    return out


class SessionRecorder:
    """An event sink per session: user turns on final transcripts, agent turns on metrics.

    The agent's turn is written when its metrics arrive (right after the
    reply event), so the row carries the heard text, the interrupted flag,
    every stage's latency and the turn's usage together. The usage covers
    the whole turn (the caller's transcription and the reply) and is kept on
    the agent's row, its cost estimated with ``prices`` when the agent left it
    unset (``priced_usage``).

    Each answered input gets an interaction log row; for a turn that used
    tools it holds the calls and the last completed action
    (``tool_interaction``). A round the caller interrupted whose actions still
    ran to the end is logged once its last result arrives.
    """

    def __init__(
        self,
        store: Store,
        session_id: str,
        transport: str,
        attributes: Mapping[str, str] | None = None,
        *,
        prices: PriceTable | None = None,
        key_id: str | None = None,
    ) -> None:
        self._store = store
        self._prices = prices
        self.session_id = session_id
        self._pending: dict[str, ReplyEvent] = {}
        self._inputs: dict[str, str] = {}
        self._calls: dict[str, list[ToolCallEvent]] = {}
        self._results: dict[str, list[ToolResultEvent]] = {}
        self._unlogged: dict[str, tuple[str, str]] = {}
        """Tool turns whose log row waits for late results: user input and reply text."""
        self._history: ChatHistory | None = None
        store.writer.submit(SessionStarted(session_id, transport, attributes, key_id=key_id))

    def bind_history(self, history: ChatHistory) -> None:
        """Give the recorder the session's ``ChatHistory`` to save as its context."""
        self._history = history

    def __call__(self, event: AgentEvent) -> None:
        writer = self._store.writer
        if isinstance(event, TranscriptEvent) and event.final:
            self._inputs[event.turn_id] = event.text
            writer.submit(
                TurnRecord(
                    session_id=self.session_id,
                    turn_id=event.turn_id,
                    role="user",
                    text=event.text,
                    stt_confidence=event.confidence,
                    started_at=_ts(event.at),
                )
            )
        elif isinstance(event, ReplyEvent):
            self._pending[event.turn_id] = event
        elif isinstance(event, ToolCallEvent):
            self._calls.setdefault(event.turn_id, []).append(event)
        elif isinstance(event, ToolResultEvent):
            self._results.setdefault(event.turn_id, []).append(event)
            if event.turn_id in self._unlogged and self._answered(event.turn_id):
                waiting_input, text = self._unlogged.pop(event.turn_id)
                self._log_tools(event.turn_id, waiting_input, text)
        elif isinstance(event, MetricsEvent):
            reply = self._pending.pop(event.turn_id, None)
            if reply is None:
                return
            writer.submit(
                TurnRecord(
                    session_id=self.session_id,
                    turn_id=reply.turn_id,
                    role="assistant",
                    text=reply.text,
                    heard_text=reply.heard_text,
                    interrupted=reply.interrupted,
                    latencies={k: getattr(event, k) for k in _LATENCY_FIELDS},
                    started_at=_ts(reply.at),
                    ended_at=_ts(event.at),
                    usage=priced_usage(event.usage, self._prices),
                )
            )
            # A reply answers every user turn since the last reply (turns the
            # caller spoke in pieces are merged into one input).
            user_input = " ".join(self._inputs.values()) if self._inputs else None
            self._inputs.clear()
            if user_input is None:
                self._calls.pop(reply.turn_id, None)  # nothing to log the calls against
                self._results.pop(reply.turn_id, None)
            elif reply.turn_id in self._calls:
                if self._answered(reply.turn_id):
                    self._log_tools(reply.turn_id, user_input, reply.text)
                else:  # a round the caller interrupted still runs its actions
                    self._unlogged[reply.turn_id] = (user_input, reply.text)
            else:
                action = "reply_interrupted" if reply.interrupted else "reply"
                writer.submit(InteractionLogged(self.session_id, user_input, reply.text, action))
            if self._history is not None:
                writer.save_context(self.session_id, messages_to_json(self._history.messages()))
        elif isinstance(event, DtmfEvent):
            writer.submit(
                TurnRecord(
                    session_id=self.session_id,
                    turn_id=f"dtmf_{event.at * 1000:.0f}_{event.digit}"[:32],
                    role="dtmf",
                    text=event.digit,
                    started_at=_ts(event.at),
                )
            )
        elif isinstance(event, ErrorEvent):
            writer.submit(SessionErrored(self.session_id))

    def _answered(self, turn_id: str) -> bool:
        done = {r.call_id for r in self._results.get(turn_id, ())}
        return all(c.call_id in done for c in self._calls.get(turn_id, ()))

    def _log_tools(self, turn_id: str, user_input: str, text: str) -> None:
        calls = self._calls.pop(turn_id, [])
        results = self._results.pop(turn_id, [])
        raw, action = tool_interaction(text, calls, results)
        self._store.writer.submit(InteractionLogged(self.session_id, user_input, raw, action))

    def ended(self, reason: str | None = None) -> None:
        """The call is over (``reason``: its hang-up cause)."""
        self._store.writer.submit(SessionEnded(self.session_id, reason=reason))


def _ts(unix: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix, dt.UTC)
