"""Our LLM (llama.cpp locally, or any ``agent.llm.LLM``) as a livekit-agents LLM plugin.

The chat context is rendered to our ``ChatMessage``s (``developer`` becomes
``system``; function calls and their outputs become assistant tool calls
and tool messages); function tools become ``ToolSpec``s (their JSON
schema). Our stream's text deltas become ``ChatChunk`` content, its tool-call
fragments one ``FunctionToolCall`` each once assembled, its usage the final
``CompletionUsage``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm
from livekit.agents.llm.tool_context import (
    get_raw_function_info,
    is_function_tool,
    is_raw_function_tool,
)
from livekit.agents.llm.utils import build_legacy_openai_schema
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from agent.errors import ProviderError
from agent.livekit_plugins.errors import to_api_error
from agent.llm import LLM as ParleyLLM  # noqa: N811 (ours, beside LiveKit's)
from agent.llm import (
    ChatMessage,
    GenerationSettings,
    TextDelta,
    ToolCall,
    ToolCallAssembler,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class LLM(llm.LLM[Any]):
    """Chats with ``provider`` using ``settings`` (shared by every session)."""

    def __init__(self, provider: ParleyLLM, settings: GenerationSettings | None = None) -> None:
        super().__init__()
        self._provider = provider
        self._settings = settings or GenerationSettings()

    @property
    def model(self) -> str:
        """The provider's model name."""
        return self._provider.model

    @property
    def provider(self) -> str:
        """Always ``parley``: the models are ours."""
        return "parley"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> LLMStream:
        """Stream a reply to ``chat_ctx`` (tool choice and extra arguments are not used)."""
        return LLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class LLMStream(llm.LLMStream):
    """One completion, streamed from our provider."""

    def __init__(
        self,
        plugin: LLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(plugin, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._plugin = plugin

    async def _run(self) -> None:
        request_id = "llm_" + secrets.token_hex(6)
        messages = to_messages(self._chat_ctx)
        specs = to_tool_specs(self._tools)
        calls = ToolCallAssembler()
        stream = self._plugin._provider.stream(messages, self._plugin._settings, specs)
        try:
            async for delta in stream:
                if isinstance(delta, TextDelta) and delta.text:
                    content = llm.ChoiceDelta(role="assistant", content=delta.text)
                    self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=content))
                elif isinstance(delta, ToolCallDelta):
                    calls.feed(delta)
                elif isinstance(delta, UsageDelta):
                    usage = llm.CompletionUsage(
                        completion_tokens=delta.completion_tokens,
                        prompt_tokens=delta.prompt_tokens,
                        total_tokens=delta.prompt_tokens + delta.completion_tokens,
                    )
                    self._event_ch.send_nowait(llm.ChatChunk(id=request_id, usage=usage))
        except ProviderError as exc:
            raise to_api_error(exc) from exc
        finally:
            await stream.aclose()
        if calls:
            tool_calls = [
                llm.FunctionToolCall(name=c.name, arguments=c.arguments, call_id=c.id)
                for c in calls.calls()
            ]
            calling = llm.ChoiceDelta(role="assistant", tool_calls=tool_calls)
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=calling))


def to_messages(ctx: llm.ChatContext) -> list[ChatMessage]:
    """A livekit-agents chat context as our chat messages (images and handoffs left out)."""
    out: list[ChatMessage] = []
    for item in ctx.items:
        if item.type == "message":
            role = _ROLES.get(item.role)
            text = item.text_content
            if role is not None and text:
                out.append(ChatMessage(role, text, interrupted=item.interrupted))  # type: ignore[arg-type]
        elif item.type == "function_call":
            call = ToolCall(item.call_id, item.name, item.arguments or "{}")
            out.append(ChatMessage("assistant", "", tool_calls=(call,)))
        elif item.type == "function_call_output":
            out.append(
                ChatMessage("tool", item.output, tool_call_id=item.call_id, name=item.name or None)
            )
    return out


def to_tool_specs(tools: Sequence[llm.Tool]) -> list[ToolSpec]:
    """livekit-agents function tools as our tool specs (name, description, JSON schema)."""
    specs: list[ToolSpec] = []
    for tool in tools:
        schema: dict[str, Any]
        if is_function_tool(tool):
            schema = build_legacy_openai_schema(tool, internally_tagged=True)
        elif is_raw_function_tool(tool):
            schema = get_raw_function_info(tool).raw_schema
        else:
            continue  # provider tools (a vendor's built-in search...) mean nothing to ours
        specs.append(
            ToolSpec(
                str(schema["name"]),
                str(schema.get("description", "")),
                schema.get("parameters") or {"type": "object", "properties": {}},
            )
        )
    return specs
