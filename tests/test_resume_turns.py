"""Defect 2: a voice session resumed in a second call keeps every turn in the store.

Each call is its own ``VoiceSession`` (as after a reconnect, or in another
worker process) over the same session id; the store skips a (session, turn
id, role) it already has, so turn ids must never repeat across calls.
"""

from __future__ import annotations

from agent.config import AgentConfig
from agent.session import VoiceSession
from signaling.recorder import SessionRecorder, messages_from_json
from store.store import Store
from tests.fakes import ScriptedLLM, fake_models, feed, silence

SESSION = "ses_resumed_twice"


async def one_call(store: Store, question: str, llm: ScriptedLLM) -> None:
    config = AgentConfig.load().model_copy(update={"greeting": None})
    history = messages_from_json(await store.state.load(SESSION))
    recorder = SessionRecorder(store, SESSION, "websocket")
    session = VoiceSession(
        config, fake_models(llm=llm), sinks=[recorder], session_id=SESSION, history=history
    )
    recorder.bind_history(session.history)
    async with session:
        await session.send_text(question)
        await feed(session, silence(1.0))
    recorder.ended()
    assert await store.writer.flush()


async def test_second_call_of_a_session_keeps_its_turns(store: Store) -> None:
    llm = ScriptedLLM(["We open at nine.", "Yes, on Saturdays too."])
    await one_call(store, "When do you open?", llm)
    await one_call(store, "Also on Saturday?", llm)
    turns = await store.sessions.turns(SESSION)
    assert [(t.role, t.text) for t in turns] == [
        ("user", "When do you open?"),
        ("assistant", "We open at nine."),
        ("user", "Also on Saturday?"),
        ("assistant", "Yes, on Saturdays too."),
    ]
    assert len({t.turn_id for t in turns if t.role == "user"}) == 2
    # the second call's LLM saw the first call's exchange as context
    second = [m.content for m in llm.requests[1].messages if m.role != "system"]
    assert second == ["When do you open?", "We open at nine.", "Also on Saturday?"]
