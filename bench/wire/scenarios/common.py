"""What every scenario shares: the context object and one question-and-answer turn."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from agent.config import AgentConfig
from bench.wire.audio import LOUD_DBFS, Gap
from bench.wire.client import WireCaller
from bench.wire.server import Monitor, ServerProcess
from bench.wire.speech import Utterance
from bench.wire.stats import summarize

STAGES = (
    ("end_of_turn_ms", "end-of-turn detection"),
    ("stt_wait_ms", "final STT (wait after end of turn)"),
    ("llm_first_token_ms", "LLM first token"),
    ("chunk_wait_ms", "LLM first chunk wait + scheduling"),
    ("tts_first_audio_ms", "TTS first audio"),
    ("network_ms", "network / playout"),
)
"""The stages that add up to the caller's voice-to-voice time, in order. For a
preemptive reply (started before the turn ended, held until it was confirmed) the LLM
and TTS stages count only their part after the release: the rest ran during the
end-of-turn wait and is reported apart as ``preemptive_hidden_ms``."""


def _after(start: float | None, end: float | None, release: float) -> float:
    """The part of the stage ``start``..``end`` (ms marks) that came after ``release``."""
    if start is None or end is None:
        return 0.0
    return max(0.0, end - max(start, release))


REPLY_END_SILENCE_S = 2.0
"""Without session events, a reply is over after this long without a loud frame.

A reply's own pauses (commas, sentences, a sentence still being synthesized)
last well under a second.
"""


def log(message: str) -> None:
    """Progress line on stderr (stdout stays free for the final summary)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class BenchContext:
    """A running server and what scenarios need to call it."""

    server: ServerProcess
    client: httpx.AsyncClient
    monitor: Monitor
    config: AgentConfig
    voices: list[str]
    quick: bool
    say: Callable[[str], None] = log
    vendors: Monitor | None = None
    """The loopback cloud vendors' process, where a scenario's server uses them."""


@dataclass
class Turn:
    """One question and what came back, measured on the caller's side."""

    question: str
    voice: str
    call: str
    index: int
    """Position of the turn in its call (0 = first question)."""
    speech_s: float
    asked_at: float = 0.0
    """Monotonic time the caller's speech ended."""
    v2v_ms: float | None = None
    """End of the caller's speech in the sent audio -> first loud received agent frame."""
    completed: bool = False
    """The reply event arrived (the reply was played out or ended)."""
    transcript: str = ""
    reply: str = ""
    reply_audio_s: float = 0.0
    server: dict[str, Any] | None = None
    """The session's own metrics event of the turn."""
    server_at: float | None = None
    """Monotonic time the metrics event arrived (places the server's marks on our clock)."""
    underruns: list[Gap] = field(default_factory=list)
    error: str | None = None

    def stages(self) -> dict[str, float] | None:
        """The per-stage breakdown of ``v2v_ms`` (None without the server's metrics)."""
        m = self.server
        if m is None or self.v2v_ms is None or m.get("voice_to_voice_ms") is None:
            return None
        parts = {k: m.get(k) for k in ("end_of_turn_ms", "stt_wait_ms", "llm_first_token_ms")}
        parts["tts_first_audio_ms"] = m.get("tts_first_audio_ms")
        if any(v is None for v in parts.values()):
            return None
        out = {k: float(v) for k, v in parts.items() if v is not None}
        hidden = 0.0
        marks = m.get("marks_ms") or {}
        if m.get("preemptive") and "released" in marks:
            release = float(marks["released"])
            llm = _after(marks.get("llm_start"), marks.get("llm_first_token"), release)
            tts = _after(marks.get("tts_first_chunk"), marks.get("tts_first_audio"), release)
            hidden = out["llm_first_token_ms"] + out["tts_first_audio_ms"] - llm - tts
            out["llm_first_token_ms"], out["tts_first_audio_ms"] = round(llm, 1), round(tts, 1)
        server_v2v = float(m["voice_to_voice_ms"])
        out["chunk_wait_ms"] = round(server_v2v - sum(out.values()), 1)
        out["network_ms"] = round(self.v2v_ms - server_v2v, 1)
        emitted = marks.get("emitted")
        if emitted is not None and self.server_at is not None:
            # the server's speech end on our clock (less the events channel's ~1 ms):
            # network in = sent -> the VAD got it (RTP, the agent's jitter buffer, Opus);
            # network out = the rest (pacer, RTP, the caller's jitter buffer, lead-in)
            heard_end = self.server_at - float(emitted) / 1000
            out["network_in_ms"] = round((heard_end - self.asked_at) * 1000, 1)
            out["network_out_ms"] = round(out["network_ms"] - out["network_in_ms"], 1)
        out["server_v2v_ms"] = server_v2v
        out["preemptive_hidden_ms"] = round(hidden, 1)
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready record."""
        data = asdict(self)
        data["underruns"] = [asdict(g) for g in self.underruns]
        data["stages"] = self.stages()
        data.pop("asked_at")
        data.pop("server_at")
        return data


def stage_summary(turns: list[Turn]) -> dict[str, dict[str, float]]:
    """Summary of every stage over the turns that have the server's metrics."""
    rows = [s for t in turns if (s := t.stages()) is not None]
    out = {key: summarize([r[key] for r in rows]) for key, _ in STAGES}
    out["server_v2v_ms"] = summarize([r["server_v2v_ms"] for r in rows])
    for part in ("network_in_ms", "network_out_ms"):  # the network stage's two ways
        out[part] = summarize([r[part] for r in rows if part in r])
    hidden = [r["preemptive_hidden_ms"] for r in rows if r["preemptive_hidden_ms"] > 0]
    out["preemptive_hidden_ms"] = summarize(hidden)
    return out


async def ask(
    caller: WireCaller,
    utterance: Utterance,
    *,
    call: str,
    index: int,
    listen_s: float,
    first_audio_s: float = 30.0,
    deadline: float | None = None,
) -> Turn:
    """Speak ``utterance``, wait for the agent's first audio, then listen to the reply.

    ``listen_s`` bounds the wait for the reply to end (its ``reply`` event, or
    ``REPLY_END_SILENCE_S`` without a loud frame for a caller whose server
    sends no events); 0 returns as soon as the first loud frame arrived. ``deadline``
    (monotonic) cuts both waits short.
    """

    def bound(seconds: float) -> float:
        return seconds if deadline is None else min(seconds, deadline - time.monotonic())

    turn = Turn(utterance.text, utterance.voice, call, index, round(utterance.speech_s, 2))
    clip = caller.say(utterance)
    if not await clip.wait(utterance.duration_s + 15.0):
        turn.error = "clip not sent"
        return turn
    start, end = clip.speech_start_at, clip.speech_end_at
    turn.asked_at = end
    if not await caller.wait_until(
        lambda: caller.loud_since(end, LOUD_DBFS) is not None, bound(first_audio_s)
    ):
        turn.error = "no agent audio in time"
        return turn
    first = caller.loud_since(end, LOUD_DBFS)
    assert first is not None
    turn.v2v_ms = round((first - end) * 1000, 1)
    if listen_s <= 0:
        return turn
    if not caller.has_events:
        return await _listen_to_audio(caller, turn, first, bound(listen_s))

    def finals() -> list[dict[str, Any]]:
        return [e for _, e in caller.of_type("transcript", start) if e.get("final")]

    def reply_of_turn() -> tuple[float, dict[str, Any]] | None:
        ids = {e["turn_id"] for e in finals()}
        for t, e in caller.of_type("reply", start):
            if e.get("turn_id") in ids:
                return t, e
        return None

    await caller.wait_until(lambda: reply_of_turn() is not None, bound(listen_s))
    got = reply_of_turn()
    fin = finals()
    turn.transcript = " | ".join(str(e.get("text", "")) for e in fin)
    if got is None:
        turn.error = "reply not over in time"
        return turn
    reply_at, reply = got
    turn.completed = True
    turn.reply = str(reply.get("text", ""))
    # the metrics event follows the reply event at once
    await caller.wait_until(
        lambda: any(e.get("turn_id") == reply["turn_id"] for _, e in caller.of_type("metrics")),
        2.0,
    )
    for at, e in caller.of_type("metrics", start):
        if e.get("turn_id") == reply["turn_id"]:
            turn.server = {k: v for k, v in e.items() if k not in ("type", "at")}
            turn.server_at = at
    await asyncio.sleep(0.3)  # the last frames may trail the event by a few packets
    _measure_reply(caller, turn, first, reply_at + 0.3)
    return turn


async def _listen_to_audio(caller: WireCaller, turn: Turn, first: float, within_s: float) -> Turn:
    """End a turn without session events: the reply is over after ``REPLY_END_SILENCE_S``."""

    def over() -> bool:
        last = caller.last_loud(LOUD_DBFS)
        return last is not None and time.monotonic() - last >= REPLY_END_SILENCE_S

    if not await caller.wait_until(over, within_s):
        turn.error = "reply not over in time"
        return turn
    turn.completed = True
    _measure_reply(caller, turn, first, time.monotonic())
    return turn


def _measure_reply(caller: WireCaller, turn: Turn, first: float, until: float) -> None:
    """The reply's audio length and its underruns, from its first loud frame to ``until``."""
    trace = caller.trace()
    span = trace.reply_span(first - 0.001, until)
    if span is not None:
        turn.reply_audio_s = round(span[1] - span[0] + 0.02, 2)
        turn.underruns = trace.underruns(span[0], span[1])
