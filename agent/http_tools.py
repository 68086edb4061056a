"""HTTP tools declared in the agent YAML (``tools.http``; see ``agent.tool_config``).

Each becomes a ``Tool`` whose handler fills the URL template with the
checked arguments (percent-encoded: a value can never add a path segment or
a query parameter of its own), sends the rest as query parameters or a JSON
body, and gives the model the answer: the JSON (or the ``result_field`` part
of it) as compact text, or the text of a non-JSON answer. The response body is
read up to ``max_response_bytes``; redirects are not followed (the host
stays the one in the YAML).

A value that stands for a whole path segment cannot be a dot segment either:
an empty value, ``.``, ``..`` or any run of dots only is refused with
``bad_arguments`` (httpx resolves dot segments, so ``..`` would walk up the
path, to an endpoint the YAML never named, with the operator's headers), and
the URL sent must still begin with the template's fixed path.

The tool's structured result (``ToolResult.data``, which reaches clients in
the ``tool_result`` event and the chat API's ``action_result``) is the
``result_field`` part of the answer; without a ``result_field`` it is the
answer only while its JSON fits in ``MAX_DATA_CHARS`` (larger: ``{"omitted":
true, "bytes": n}``), so a large answer is never copied into every event.

Failures become ``ToolError``s the model can explain: ``"http_404"``-style
codes with "the service refused the request (HTTP 404)", ``"unreachable"``
when no connection could be made. Header values and response bodies are
never logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from agent.errors import ConfigError
from agent.llm import ToolSpec
from agent.tool_config import HttpToolConfig, ToolsConfig, url_fields
from agent.tools import MAX_RESULT_CHARS, Tool, ToolContext, ToolError, ToolResult, result_json

USER_AGENT = "parley-agent"
MAX_DATA_CHARS = MAX_RESULT_CHARS
"""Largest answer (as compact JSON, or text) kept whole in a tool's ``data`` when the YAML
names no ``result_field``."""

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class HttpTool:
    """The handler of one HTTP tool; ``aclose()`` releases its connection pool."""

    def __init__(self, config: HttpToolConfig, headers: Mapping[str, str]) -> None:
        self.config = config
        self._fields = frozenset(url_fields(config.url))
        self._path_fields, self._fixed_path = _path_template(config.url)
        self._client = httpx.AsyncClient(
            headers={"user-agent": USER_AGENT, **headers},
            timeout=config.timeout_s,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the host is the YAML's
        )

    def tool(self) -> Tool:
        """The ``Tool`` to register."""
        c = self.config
        return Tool(
            ToolSpec(c.name, c.description, c.parameters),
            self,
            timeout_s=c.timeout_s,
            cancellable=c.cancellable,
            filler=c.filler,
        )

    def request_parts(self, arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The URL and the remaining arguments for ``arguments`` (already checked).

        ``ToolError`` (``bad_arguments``) when a path placeholder's value is empty or a dot
        segment, or the URL would leave the template's fixed path (see the module doc).
        """
        name = self.config.name
        values: dict[str, str] = {}
        for field in self._fields:
            text = _scalar_text(arguments[field])
            if field in self._path_fields and not text.strip("."):
                raise ToolError(
                    name,
                    f"{field} must name something: not empty, '.' or '..'",
                    code="bad_arguments",
                )
            values[field] = quote(text, safe="")
        url = self.config.url.format(**values)
        if not httpx.URL(url).path.startswith(self._fixed_path):
            raise ToolError(
                name, "the arguments would change the service's path", code="bad_arguments"
            )
        rest = {k: v for k, v in arguments.items() if k not in self._fields}
        return url, rest

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        c = self.config
        url, rest = self.request_parts(arguments)
        kwargs: dict[str, Any] = {}
        if c.method in _BODY_METHODS:
            kwargs["json"] = rest
        elif rest:
            kwargs["params"] = {k: _scalar_text(v) for k, v in rest.items()}
        try:
            async with self._client.stream(c.method, url, **kwargs) as response:
                body = await _read_bounded(response, c.max_response_bytes, c.name)
        except httpx.TimeoutException as exc:
            raise ToolError(c.name, "the service did not answer in time", code="timeout") from exc
        except httpx.HTTPError as exc:
            raise ToolError(c.name, "the service could not be reached", code="unreachable") from exc
        status = response.status_code
        if status >= 400 or 300 <= status < 400:
            side = "refused the request" if status < 500 else "failed"
            raise ToolError(c.name, f"the service {side} (HTTP {status})", code=f"http_{status}")
        return self._result(response, body)

    def _result(self, response: httpx.Response, body: bytes) -> ToolResult:
        c = self.config
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if "json" not in response.headers.get("content-type", ""):
            data = (
                {"text": text}
                if len(text) <= MAX_DATA_CHARS
                else {"omitted": True, "bytes": len(body)}
            )
            return ToolResult(text.strip() or "done", c.completed_action, data)
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolError(c.name, "the service sent malformed JSON", code="bad_response") from exc
        if c.result_field:
            value = _pick(value, c.result_field, c.name)
        content = value if isinstance(value, str) else result_json(value)
        if c.result_field or len(content) <= MAX_DATA_CHARS:
            data = value if isinstance(value, dict) else {"value": value}
        else:
            data = {"omitted": True, "bytes": len(body)}
        return ToolResult(content, c.completed_action, data)

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        await self._client.aclose()


def _path_template(url: str) -> tuple[frozenset[str], str]:
    """The placeholders of a URL template's path, and its path up to the first one (the
    whole path when it has none)."""
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    head = url[:cut]
    fields = frozenset(url_fields(head))
    brace = head.find("{")
    fixed = head if brace < 0 else head[:brace]
    return fields, httpx.URL(fixed).path or "/"


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return result_json(value)


async def _read_bounded(response: httpx.Response, limit: int, tool: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ToolError(
                tool, f"the answer is larger than {limit} bytes", code="response_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _pick(value: Any, path: str, tool: str) -> Any:
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise ToolError(tool, f"the answer has no {path}", code="bad_response")
    return value


def http_tools(config: ToolsConfig, env: Mapping[str, str] | None = None) -> list[HttpTool]:
    """The HTTP tools of an agent; ``ConfigError`` when a header's variable is not set."""
    source = os.environ if env is None else env
    headers: list[dict[str, str]] = []
    for tool in config.http:  # every header first: a refusal leaves no client open
        values: dict[str, str] = {}
        for header, var in tool.headers_from_env.items():
            value = source.get(var)
            if not value:
                raise ConfigError(
                    f"tool {tool.name}: environment variable {var} (header {header}) is not set"
                )
            values[header] = value
        headers.append(values)
    return [HttpTool(tool, values) for tool, values in zip(config.http, headers, strict=True)]
