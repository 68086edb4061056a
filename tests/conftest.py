"""Shared fixtures: the real local models (loaded once for the whole run) and the store."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.config import AgentConfig
from agent.runtime import AgentModels
from tests.backends import backend_fixture, settings_fixture, store_fixture

# Servers started by tests listen for SIP only where a test asks for it (on a free
# port): the default 127.0.0.1:5060 would be shared by every test server.
os.environ.setdefault("PARLEY_SIP_LISTEN", "off")

__all__ = ["backend_fixture", "settings_fixture", "store_fixture"]
"""Store fixtures (``backend``, ``settings``, ``store``) shared by every test module."""


@pytest.fixture(scope="session")
def agent_config() -> AgentConfig:
    """The default agent with a fixed LLM seed, so replies are repeatable."""
    config = AgentConfig.load()
    return config.model_copy(update={"llm": config.llm.model_copy(update={"seed": 7})})


@pytest.fixture(scope="session")
def models(agent_config: AgentConfig) -> Iterator[AgentModels]:
    """VAD, Whisper tiny.en, SmolLM2-135M and the Piper voice, loaded once."""
    loaded = AgentModels.load(agent_config)
    yield loaded
    loaded.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which store backends the run really used."""
    from tests.backends import RESULTS

    if RESULTS:
        terminalreporter.section("store backends")
        for backend, what in sorted(RESULTS.items()):
            terminalreporter.write_line(f"{backend}: {what}")
