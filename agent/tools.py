"""Tools the agent may call: their specs, handlers, limits, and a registry.

A ``Tool`` pairs the ``ToolSpec`` the model sees (name, description, JSON-schema
parameters) with an async handler and the rules of running it: a time budget,
whether barge-in may cancel it, and an optional filler the agent says while it
runs longer than a moment. Handlers receive the validated arguments and a
``ToolContext`` (who is calling, in which session and turn) and return a
``ToolResult``: the text fed back to the model, the action it completed (for
the interaction log and the chat API's ``action_result``) and structured data.

A handler signals a failure the model should hear about (no such song, the
account is not connected) by raising ``ToolError`` with a message safe to say
to the caller (kept as the result's ``spoken``: the reply loop says it when the
model stays silent); anything else it raises is reported to the model as an
internal failure without details.

``ToolRegistry.run`` runs one call the model asked for: it finds the tool,
parses and checks the arguments against the tool's schema (``agent.schema``),
runs the handler within its time budget and turns every failure into a
``ToolResult`` with ``error=True``, a stable ``code`` and a message the model
can act on (``"query: expected a string, got 12"``), so a bad call never
crashes a reply. The reply loop (``agent.toolloop``) runs the calls of a step
and feeds the results back to the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError
from agent.llm import ToolCall, ToolSpec
from agent.schema import SchemaError, argument_errors, check_schema
from agent.tasks import describe_failure

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 2000
"""Longest tool result given back to the model (longer ones are cut, with a mark)."""


class ToolError(AgentError):
    """A tool could not do what was asked; ``message`` is safe to tell the caller.

    ``action`` names the action that failed (``"play"``), ``code`` a stable
    machine-readable reason (``"not_connected"``, ``"not_found"``,
    ``"bad_arguments"``, ``"timeout"``).
    """

    def __init__(self, tool: str, message: str, *, code: str = "failed") -> None:
        super().__init__(f"{tool}: {message}")
        self.tool = tool
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who calls a tool, and where: handlers use it to act on the right account."""

    session_id: str | None
    user_id: str | None
    turn_id: str
    preferences: Mapping[str, Any] = field(default_factory=dict)
    """What the session knows of the user's choices (e.g. ``{"platform": "spotify"}``)."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool did.

    ``content`` goes back to the model (short text or JSON); ``action`` names the
    completed action (``"play"``, ``"pause"``, ...; None for a read-only lookup);
    ``data`` is the structured result returned to API clients.
    """

    content: str
    action: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    error: bool = False
    code: str | None = None
    """Why it failed (``ToolError.code``, or ``"unknown_tool"``, ``"bad_arguments"``,
    ``"timeout"``, ``"cancelled"``, ``"internal"``); None when it succeeded."""
    spoken: str | None = None
    """A failure's message as the caller may hear it (a handler's ``ToolError``): the
    reply loop says it when the model answers the failure with silence. None for
    failures whose text is meant for the model alone (a schema mismatch)."""

    @classmethod
    def failure(cls, code: str, message: str, *, speakable: bool = False) -> ToolResult:
        """A failed call: the model reads ``message``; ``speakable`` when the caller may
        hear it as it is (``spoken``)."""
        return cls(
            f"error ({code}): {message}",
            error=True,
            code=code,
            spoken=message if speakable else None,
        )


ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
"""An async function from validated arguments and the context to a result."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A callable tool and the rules of running it."""

    spec: ToolSpec
    handler: ToolHandler
    timeout_s: float = 10.0
    """The handler's time budget; past it the call fails with ``code="timeout"``."""
    cancellable: bool = True
    """Whether barge-in may cancel it while it runs (an action that must complete once
    started, such as a purchase, says False: its result is committed either way)."""
    filler: str | None = None
    """Said when the tool runs longer than a moment (None: the agent's default,
    ``tools.filler`` in its YAML)."""

    @property
    def name(self) -> str:
        """The tool's name as the model calls it."""
        return self.spec.name


class ToolRegistry:
    """The tools one agent offers, by name (registration order is kept for the model)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add a tool; ``ValueError`` when its name is taken or not a valid function name,
        or its parameters are not an object schema within ``agent.schema``'s subset."""
        name = tool.name
        if not name or not name.replace("_", "").isalnum() or len(name) > 64:
            raise ValueError(f"invalid tool name {name!r}: letters, digits and _ only, ≤ 64")
        if name in self._tools:
            raise ValueError(f"tool {name!r} is already registered")
        if tool.spec.parameters.get("type") != "object":
            raise ValueError(f"tool {name!r}: parameters must be a schema of type object")
        try:
            check_schema(tool.spec.parameters)
        except SchemaError as exc:
            raise ValueError(f"tool {name!r}: {exc}") from exc
        if not tool.timeout_s > 0:
            raise ValueError(f"tool {name!r}: timeout_s must be > 0")
        self._tools[name] = tool

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if any."""
        return self._tools.get(name)

    def specs(self) -> tuple[ToolSpec, ...]:
        """What the model is offered, in registration order."""
        return tuple(tool.spec for tool in self._tools.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def prepare(self, call: ToolCall) -> tuple[Tool, dict[str, Any]] | ToolResult:
        """The tool and checked arguments of ``call``, or the failure to report instead."""
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return ToolResult.failure(
                "unknown_tool", f"there is no tool named {call.name!r} (tools: {known})"
            )
        try:
            arguments = call.parsed_arguments()
        except ValueError:
            return ToolResult.failure(
                "bad_arguments", f"the arguments of {tool.name} must be a JSON object"
            )
        problems = argument_errors(tool.spec.parameters, arguments)
        if problems:
            return ToolResult.failure("bad_arguments", f"{tool.name}: {'; '.join(problems)}")
        return tool, arguments

    async def run(self, call: ToolCall, context: ToolContext) -> ToolResult:
        """Run ``call``: never raises but ``CancelledError`` (see the module doc)."""
        prepared = self.prepare(call)
        if isinstance(prepared, ToolResult):
            return prepared
        tool, arguments = prepared
        return await execute(tool, arguments, context)


async def execute(tool: Tool, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    """Run a tool's handler on checked arguments within its time budget.

    A ``ToolError`` becomes a failed result with its message and code; running
    past ``timeout_s`` fails with ``"timeout"``; anything else the handler
    raises fails with ``"internal"`` and is logged by class and place only
    (messages may quote the caller's words). ``CancelledError`` propagates.
    """
    try:
        async with asyncio.timeout(tool.timeout_s):
            result = await tool.handler(arguments, context)
    except ToolError as exc:
        return ToolResult.failure(exc.code, exc.message, speakable=True)
    except TimeoutError:
        return ToolResult.failure("timeout", f"{tool.name} took longer than {tool.timeout_s:g} s")
    except Exception as exc:
        log.error("tool %s failed: %s", tool.name, describe_failure(exc))
        return ToolResult.failure("internal", f"{tool.name} failed")
    if not isinstance(result, ToolResult):
        log.error("tool %s returned %s, not a ToolResult", tool.name, type(result).__name__)
        return ToolResult.failure("internal", f"{tool.name} failed")
    if len(result.content) > MAX_RESULT_CHARS:
        cut = result.content[: MAX_RESULT_CHARS - 20].rstrip() + " ... (cut)"
        result = dataclasses.replace(result, content=cut)
    return result


def result_json(value: Any) -> str:
    """Compact JSON for a tool result's ``content`` (non-JSON values as their text)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
