"""Tools: argument checking, running calls, HTTP tools over loopback, the text chat, and the
local model's grammar-constrained calls (real SmolLM2)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.http_tools import HttpTool, http_tools
from agent.llm import (
    ChatMessage,
    GenerationSettings,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from agent.providers.llama import LlamaLLM
from agent.providers.llama_tools import ToolFormat, ToolOutput
from agent.runtime import AgentModels
from agent.schema import SchemaError, argument_errors, check_schema
from agent.tool_config import HttpToolConfig, ToolsConfig
from agent.tools import Tool, ToolContext, ToolError, ToolRegistry, ToolResult
from signaling.textchat import TextChats
from store.models import InteractionLog
from store.store import Store
from tests.fakes import EnergyVAD, FakeSTT, FakeTTS, ScriptedLLM
from tests.vendors.loopback import LoopbackServer

CTX = ToolContext(session_id="ses_t", user_id=None, turn_id="turn_t")

PLAY = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 40},
        "volume": {"type": "integer", "minimum": 0, "maximum": 100},
        "mode": {"enum": ["track", "album"]},
    },
    "required": ["query"],
    "additionalProperties": False,
}

# ---------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"query": "hello"}, None),
        ({"query": "hello", "volume": 30, "mode": "album"}, None),
        ({}, "query: is required"),
        ({"query": 12}, "query: expected a string, got 12"),
        ({"query": ""}, "query: must have at least 1 characters"),
        ({"query": "x" * 41}, "query: must have at most 40 characters"),
        ({"query": "a", "volume": 101}, "volume: must be at most 100"),
        ({"query": "a", "volume": True}, "volume: expected an integer, got True"),
        ({"query": "a", "volume": 2.5}, "volume: expected an integer"),
        ({"query": "a", "mode": "radio"}, "mode: must be one of 'track', 'album'"),
        ({"query": "a", "shuffle": True}, "shuffle: is not a known argument"),
        ([1, 2], "arguments: expected an object"),
    ],
)
def test_arguments_are_checked_against_the_schema(value: Any, problem: str | None) -> None:
    errors = argument_errors(PLAY, value)
    if problem is None:
        assert errors == []
    else:
        assert any(problem in e for e in errors), errors


def test_schemas_outside_the_subset_are_refused() -> None:
    check_schema(PLAY)
    with pytest.raises(SchemaError, match="oneOf"):
        check_schema({"type": "object", "oneOf": []})
    with pytest.raises(SchemaError, match="type"):
        check_schema({"type": "text"})
    with pytest.raises(SchemaError, match="pattern"):
        check_schema({"type": "string", "pattern": "("})
    registry = ToolRegistry()
    with pytest.raises(ValueError, match="type object"):
        registry.register(Tool(ToolSpec("t", "d", {"type": "string"}), _echo))


# ---------------------------------------------------------------- running calls


async def _echo(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    return ToolResult(json.dumps(arguments), "echo", arguments)


async def _refuse(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    raise ToolError("refuse", "the account is not connected", code="not_connected")


async def _crash(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    raise RuntimeError("secret details of the failure")


async def _hang(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    await asyncio.sleep(30)
    return ToolResult("late")


async def test_run_turns_every_failure_into_a_result() -> None:
    registry = ToolRegistry(
        [
            Tool(ToolSpec("echo", "Echo.", PLAY), _echo),
            Tool(ToolSpec("refuse", "Refuse."), _refuse),
            Tool(ToolSpec("crash", "Crash."), _crash),
            Tool(ToolSpec("hang", "Hang."), _hang, timeout_s=0.05),
        ]
    )
    ok = await registry.run(ToolCall("1", "echo", '{"query": "a"}'), CTX)
    assert (ok.error, ok.action, dict(ok.data)) == (False, "echo", {"query": "a"})
    outcomes = {
        name: await registry.run(ToolCall("x", name, args), CTX)
        for name, args in [
            ("refuse", "{}"),
            ("crash", "{}"),
            ("hang", "{}"),
            ("nope", "{}"),
        ]
    }
    assert {n: (r.error, r.code) for n, r in outcomes.items()} == {
        "refuse": (True, "not_connected"),
        "crash": (True, "internal"),
        "hang": (True, "timeout"),
        "nope": (True, "unknown_tool"),
    }
    assert "secret" not in outcomes["crash"].content
    assert "not connected" in outcomes["refuse"].content
    assert "echo" in outcomes["nope"].content  # the model is told what exists
    garbage = await registry.run(ToolCall("2", "echo", "[1, 2"), CTX)
    assert garbage.code == "bad_arguments"


# ---------------------------------------------------------------- HTTP tools


class WeatherService(LoopbackServer):
    """A small JSON API: GET /v1/now/{city}, POST /v1/alerts; records requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        super().__init__(
            Starlette(
                routes=[
                    Route("/v1/now/{city:path}", self.now),
                    Route("/v1/alerts", self.alerts, methods=["POST"]),
                    Route("/v1/text", self.text),
                    Route("/v1/stations", self.stations),
                    Route("/{rest:path}", self.elsewhere),
                ]
            )
        )

    async def _record(self, request: Request) -> None:
        body = await request.body()
        raw = request.scope["raw_path"].decode() + "?" + request.scope["query_string"].decode()
        self.requests.append((request.method, raw, dict(request.headers), body))

    async def now(self, request: Request) -> Response:
        await self._record(request)
        if request.headers.get("authorization") != "Bearer wx-key":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        city = request.path_params["city"]
        if city == "Atlantis":
            return JSONResponse({"error": "unknown city"}, status_code=404)
        units = request.query_params.get("units", "metric")
        return JSONResponse({"current": {"summary": f"sunny in {city}", "units": units}})

    async def alerts(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"id": "al_1", "received": json.loads(await request.body())})

    async def text(self, request: Request) -> Response:
        await self._record(request)
        return PlainTextResponse("x" * 5000)

    async def stations(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"stations": [{"id": i, "name": f"Station {i}"} for i in range(500)]})

    async def elsewhere(self, request: Request) -> Response:
        """Any other path: what a request that escaped its template would reach."""
        await self._record(request)
        return JSONResponse({"admin": "secret operator data"})


@pytest.fixture
async def weather() -> AsyncIterator[WeatherService]:
    async with WeatherService() as server:
        yield server


def weather_tools(url: str, **extra: Any) -> ToolsConfig:
    return ToolsConfig.model_validate(
        {
            "http": [
                {
                    "name": "get_weather",
                    "description": "Current weather in a city.",
                    "url": f"{url}/v1/now/{{city}}",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "units": {"enum": ["metric", "imperial"]},
                        },
                        "required": ["city"],
                    },
                    "headers_from_env": {"Authorization": "WX_AUTH"},
                    "result_field": "current.summary",
                    "action": None,
                },
                {
                    "name": "set_alert",
                    "description": "Set a weather alert.",
                    "method": "POST",
                    "url": f"{url}/v1/alerts",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "above_c": {"type": "number"}},
                        "required": ["city", "above_c"],
                    },
                    **extra,
                },
                {
                    "name": "big_text",
                    "description": "A large answer.",
                    "url": f"{url}/v1/text",
                    "max_response_bytes": 1000,
                },
                {
                    "name": "stations",
                    "description": "Every weather station.",
                    "url": f"{url}/v1/stations",
                },
            ]
        }
    )


async def test_http_tools_call_the_service_as_declared(weather: WeatherService) -> None:
    built = http_tools(weather_tools(weather.url), {"WX_AUTH": "Bearer wx-key"})
    registry = ToolRegistry(t.tool() for t in built)
    try:
        now = await registry.run(
            ToolCall("1", "get_weather", '{"city": "São Paulo/../x", "units": "imperial"}'), CTX
        )
        assert not now.error and now.action is None
        assert now.content == "sunny in São Paulo/../x"
        _, url, headers, _ = weather.requests[-1]
        # the argument stays one path segment; the rest went to the query string
        assert url.endswith("/v1/now/S%C3%A3o%20Paulo%2F..%2Fx?units=imperial")
        assert headers["authorization"] == "Bearer wx-key"
        alert = await registry.run(
            ToolCall("2", "set_alert", '{"city": "Oslo", "above_c": 25.5}'), CTX
        )
        assert alert.action == "set_alert" and alert.data["received"] == {
            "city": "Oslo",
            "above_c": 25.5,
        }
        missing = await registry.run(ToolCall("3", "get_weather", '{"city": "Atlantis"}'), CTX)
        assert (missing.error, missing.code) == (True, "http_404")
        big = await registry.run(ToolCall("4", "big_text", "{}"), CTX)
        assert big.code == "response_too_large"
    finally:
        for tool in built:
            await tool.aclose()


async def test_http_tool_failures_and_configuration_errors(weather: WeatherService) -> None:
    with pytest.raises(ConfigError, match="WX_AUTH"):
        http_tools(weather_tools(weather.url), {})
    built = http_tools(weather_tools(weather.url), {"WX_AUTH": "Bearer wrong"})
    try:
        with pytest.raises(ToolError, match=r"refused the request \(HTTP 401\)"):
            await built[0](dict(city="Oslo"), CTX)
    finally:
        for tool in built:
            await tool.aclose()
    gone = HttpTool(
        HttpToolConfig(name="gone", description="d", url="http://127.0.0.1:9/x", timeout_s=1),
        {},
    )
    try:
        with pytest.raises(ToolError, match="could not be reached"):
            await gone({}, CTX)
    finally:
        await gone.aclose()
    bad_urls = [
        "http://{host}/x",  # the host is never a placeholder
        "ftp://127.0.0.1/x",
        "http://127.0.0.1/{undeclared}",
    ]
    for url in bad_urls:
        with pytest.raises(ValueError, match="url"):
            HttpToolConfig(name="t", description="d", url=url)


@pytest.mark.parametrize("city", ["..", ".", "", "...", "../..", "../admin"])
async def test_a_path_value_never_walks_up_the_path(weather: WeatherService, city: str) -> None:
    """Dot segments are resolved by the HTTP client: ``..`` as a whole segment would send
    the operator's credentials to a path the YAML never named. Such values are refused
    before any request; a ``/`` in a value stays inside its segment."""
    built = http_tools(weather_tools(weather.url), {"WX_AUTH": "Bearer wx-key"})
    registry = ToolRegistry(t.tool() for t in built)
    try:
        result = await registry.run(ToolCall("1", "get_weather", json.dumps({"city": city})), CTX)
    finally:
        for tool in built:
            await tool.aclose()
    if "/" in city:  # encoded into one segment: the service sees an odd city, nothing more
        assert [r[1].split("?")[0] for r in weather.requests] == [
            "/v1/now/" + city.replace("/", "%2F")
        ]
        return
    assert (result.error, result.code) == (True, "bad_arguments")
    assert weather.requests == []


def test_a_dot_segment_in_the_middle_of_a_template_is_refused() -> None:
    tool = HttpTool(
        HttpToolConfig(
            name="t",
            description="d",
            url="http://127.0.0.1:9/v1/now/{city}/detail?units={units}",
            parameters={
                "type": "object",
                "properties": {"city": {"type": "string"}, "units": {"type": "string"}},
                "required": ["city", "units"],
            },
        ),
        {},
    )
    url, rest = tool.request_parts({"city": "Oslo", "units": "..", "days": 2})
    assert url == "http://127.0.0.1:9/v1/now/Oslo/detail?units=.." and rest == {"days": 2}
    assert tool.request_parts({"city": "a..b", "units": "c"})[0].startswith(
        "http://127.0.0.1:9/v1/now/a..b/detail"
    )
    for city in ("..", ".", "", "...."):
        with pytest.raises(ToolError) as caught:
            tool.request_parts({"city": city, "units": "metric"})
        assert caught.value.code == "bad_arguments"


def test_only_get_tools_are_cancellable_unless_the_yaml_says() -> None:
    def config(**fields: Any) -> HttpToolConfig:
        return HttpToolConfig(name="t", description="d", url="http://127.0.0.1:9/x", **fields)

    assert config().cancellable is True
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert config(method=method).cancellable is False
        assert config(method=method, cancellable=True).cancellable is True
    assert config(method="GET", cancellable=False).cancellable is False
    tools = ToolsConfig.model_validate(
        {"http": [{"name": "buy", "description": "d", "method": "POST", "url": "http://h.x/b"}]}
    )
    assert tools.http[0].cancellable is False
    built = http_tools(tools, {})
    assert built[0].tool().cancellable is False


async def test_a_large_answer_without_result_field_stays_out_of_the_data(
    weather: WeatherService,
) -> None:
    built = http_tools(weather_tools(weather.url), {"WX_AUTH": "Bearer wx-key"})
    registry = ToolRegistry(t.tool() for t in built)
    try:
        result = await registry.run(ToolCall("1", "stations", "{}"), CTX)
    finally:
        for tool in built:
            await tool.aclose()
    assert not result.error
    assert result.content.startswith('{"stations":[{"id":0') and len(result.content) <= 2000
    assert result.data["omitted"] is True and result.data["bytes"] > 10_000
    assert len(json.dumps(result.data)) < 100


def test_the_default_agent_yaml_loads_its_tools_section() -> None:
    config = AgentConfig.load()
    settings = config.tools.to_settings()
    assert settings.max_steps >= 1 and 0 < settings.filler_after_s < 2


# ---------------------------------------------------------------- text chat


async def test_text_chat_runs_the_tool_loop_and_returns_the_action(store: Store) -> None:
    calls: list[dict[str, Any]] = []

    async def play(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        calls.append(arguments)
        return ToolResult("playing", "play", {"track": "Dancing Queen"})

    registry = ToolRegistry([Tool(ToolSpec("play_track", "Play.", PLAY), play)])
    llm = ScriptedLLM(
        [
            [ToolCallDelta(0, "c1", "play_track", '{"query": "dancing queen"}')],
            "Playing Dancing Queen.",
            "Anything else?",
        ]
    )
    models = AgentModels(vad=EnergyVAD(), stt=FakeSTT(), llm=llm, tts=FakeTTS())
    chats = TextChats(AgentConfig.load(), models, store, tools=registry)
    first = await chats.reply("play dancing queen")
    assert first.reply == "Playing Dancing Queen."
    assert first.action_result == {
        "tool": "play_track",
        "action": "play",
        "data": {"track": "Dancing Queen"},
    }
    second = await chats.reply("thanks", first.session_id)
    assert second.action_result is None and second.reply == "Anything else?"
    # the second request saw the first turn's call and result
    roles = [m.role for m in llm.requests[2].messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert await store.writer.flush()
    async with store.db() as db:
        rows = list(await db.scalars(select(InteractionLog)))
    assert [(r.user_input, r.final_action) for r in rows] == [("play dancing queen", "play")]


# ---------------------------------------------------------------- the local model's grammar

TOOLS = [
    ToolSpec(
        "play_track",
        "Play a song.",
        {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    ),
    ToolSpec("pause", "Pause the music."),
    ToolSpec("next_track", "Skip to the next song."),
    ToolSpec(
        "add_to_playlist",
        "Add the current song to a playlist.",
        {
            "type": "object",
            "properties": {"playlist": {"type": "string"}},
            "required": ["playlist"],
        },
    ),
    ToolSpec("like_track", "Like the current song."),
    ToolSpec(
        "set_volume",
        "Set the volume.",
        {
            "type": "object",
            "properties": {"level": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["level"],
        },
    ),
]
PROMPTS = [
    "play shape of you by ed sheeran",
    "pause the music",
    "skip this song",
    "add this to my workout playlist",
    "like this song",
    "turn the volume up to eighty",
    "what is the capital of france?",
    "tell me a joke",
    "put on some jazz",
    "how are you today?",
]


def test_tool_output_streams_words_and_emits_calls_whole() -> None:
    out = ToolOutput(TOOLS, "call_or_say")
    deltas = []
    for piece in ['{"name": "sa', 'y", "arguments": {"text": "Hel', 'lo \\"you\\"', '!"}}']:
        deltas += out.feed(piece)
    deltas += out.finish()
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == 'Hello "you"!'
    words = ToolOutput(TOOLS, "call_or_text")
    assert words.feed("  Sure") == [TextDelta("Sure")] and words.feed("!") == [TextDelta("!")]
    call = ToolOutput(TOOLS, "call_or_text")
    assert call.feed('{"name": "pause", "arguments": {}}') == []
    (delta,) = call.finish()
    assert isinstance(delta, ToolCallDelta) and delta.name == "pause" and delta.arguments == "{}"


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaLLM]:
    model = LlamaLLM()
    yield model
    model.close()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["call_or_say", "call_or_text"])
async def test_the_local_models_constrained_output_always_parses(
    llama: LlamaLLM, fmt: ToolFormat
) -> None:
    llama.settings = dataclasses.replace(llama.settings, tool_format=fmt)
    schemas = {t.name: t.parameters for t in TOOLS}
    kinds = []
    for i, prompt in enumerate(PROMPTS):
        messages = [ChatMessage("system", "You are Parley."), ChatMessage("user", prompt)]
        settings = GenerationSettings(max_tokens=40, temperature=0.7, seed=i)
        deltas = [d async for d in llama.stream(messages, settings, TOOLS)]
        *answer, usage = deltas
        assert isinstance(usage, UsageDelta)
        calls = [d for d in answer if isinstance(d, ToolCallDelta)]
        if calls:
            (only,) = answer
            assert isinstance(only, ToolCallDelta) and only.name in schemas, only
            arguments = json.loads(only.arguments)
            assert argument_errors(schemas[only.name], arguments) == [], (prompt, only)
            kinds.append("call")
        else:
            assert answer and all(isinstance(d, TextDelta) for d in answer)
            assert "".join(d.text for d in answer if isinstance(d, TextDelta)).strip()
            kinds.append("words")
    assert len(kinds) == len(PROMPTS)


# ---------------------------------------------------------------- cloud LLMs' native tools


@pytest.mark.parametrize("vendor_name", ["openai", "groq"])
async def test_cloud_llms_native_tool_calls_drive_the_loop(vendor_name: str, store: Store) -> None:
    pytest.importorskip("openai", reason="cloud extra not installed (scripts/setup.sh cloud)")
    pytest.importorskip("groq", reason="cloud extra not installed (scripts/setup.sh cloud)")
    from agent.providers.groq_llm import GroqLLM, GroqSettings
    from agent.providers.openai_llm import OpenAICompatibleLLM, OpenAISettings
    from tests.vendors.openai_api import ChatReply, OpenAIAPIServer, ScriptedToolCall

    played: list[dict[str, Any]] = []

    async def play(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        played.append(arguments)
        return ToolResult("now playing Shape of You", "play", {"track": "Shape of You"})

    registry = ToolRegistry([Tool(ToolSpec("play_track", "Play.", PLAY), play)])
    async with OpenAIAPIServer("sk-test") as vendor:
        vendor.queue_chat(
            ChatReply("", tool_calls=[ScriptedToolCall("play_track", '{"query": "shape of you"}')]),
            ChatReply("Playing Shape of You."),
        )
        llm: OpenAICompatibleLLM | GroqLLM
        if vendor_name == "openai":
            llm = OpenAICompatibleLLM(OpenAISettings("sk-test", base_url=vendor.openai_base_url))
        else:
            llm = GroqLLM(GroqSettings("sk-test", base_url=vendor.groq_base_url))
        try:
            models = AgentModels(vad=EnergyVAD(), stt=FakeSTT(), llm=llm, tts=FakeTTS())
            chats = TextChats(AgentConfig.load(), models, store, tools=registry)
            answer = await chats.reply("play shape of you")
        finally:
            await llm.aclose()
        first, second = [r.json for r in vendor.recorded("chat/completions")]
    assert played == [{"query": "shape of you"}]
    assert answer.reply == "Playing Shape of You."
    assert answer.action_result is not None and answer.action_result["action"] == "play"
    assert first["tools"][0]["function"]["name"] == "play_track"
    # the second request carries the call and its result in the vendor's wire format
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "play_track"
    assert tool == {
        "role": "tool",
        "tool_call_id": assistant["tool_calls"][0]["id"],
        "content": "now playing Shape of You",
    }
