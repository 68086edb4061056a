"""The ``tools`` section of an agent YAML: how the reply loop runs tools, and HTTP tools.

```yaml
tools:
  max_steps: 3              # tool rounds per reply; the last model request gets no tools
  filler_after_ms: 400      # a round still running this long gets a filler ...
  filler: "One moment."     # ... unless the tool has its own
  clarification: "Sorry, I didn't get that. Could you say it again?"
  http:
    - name: get_weather
      description: Current weather in a city.
      method: GET
      url: "https://weather.example/v1/now/{city}"   # placeholders: parameters
      parameters:
        type: object
        properties: {city: {type: string, maxLength: 60}}
        required: [city]
        additionalProperties: false
      headers_from_env: {Authorization: WEATHER_AUTH}  # header -> env var name
      result_field: current.summary                   # what the model reads
      timeout_s: 5
      cancellable: true                               # default: method == GET
      action: null                                    # a lookup, not an action
```

An HTTP tool's scheme, host and port are fixed by its URL; placeholders may
only stand in the path and query, and only for declared parameters, so a
model can never point a request at another server. Nor at another path of
it: a value is percent-encoded into its place (a ``/`` in it stays inside
the segment), and a path placeholder whose value is empty or only dots
(``.``, ``..``, which would walk up the path) is refused with
``bad_arguments``, as is any URL whose path no longer begins with the
template's fixed part (``agent.http_tools``). Arguments not used in the URL
go to the query string (GET, DELETE) or the JSON body (POST, PUT, PATCH).
Header values come from environment variables named here (never written in
the YAML, never logged); a missing variable fails at start-up.

``cancellable`` (whether barge-in may cancel a call in flight) defaults to
true for GET only: a POST, PUT, PATCH or DELETE changes something, so once
sent it completes unless the YAML says ``cancellable: true``. Without a
``result_field`` the model reads the whole answer (cut to the tool result's
bound) while clients get it in ``data`` only when it is small.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.schema import SchemaError, check_schema
from agent.toolloop import ToolSettings

_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def url_fields(url: str) -> list[str]:
    """The placeholder names of a URL template, in order (``ValueError`` if malformed)."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(url):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"bad URL placeholder {{{name}}}: use {{parameter_name}} only")
        names.append(name)
    return names


class HttpToolConfig(_Section):
    """A tool that calls an HTTP endpoint (see the module doc)."""

    name: str = Field(..., min_length=1, max_length=64)
    description: str = Field(..., min_length=1, max_length=1000)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str = Field(..., min_length=8, max_length=2000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    headers_from_env: dict[str, str] = Field(default_factory=dict)
    """Request header name -> the environment variable that holds its value."""
    result_field: str | None = Field(None, max_length=200)
    """A dotted path into the JSON answer; only that part is given to the model."""
    timeout_s: float = Field(5.0, gt=0.0, le=60.0)
    cancellable: bool = True
    """Whether barge-in may cancel a call in flight; unset in the YAML: only a GET is."""
    filler: str | None = Field(None, max_length=200)
    action: str | None = Field("", max_length=64)
    """The action a success completes, for the interaction log and ``action_result``
    (empty: the tool's name; null: a lookup that changes nothing)."""
    max_response_bytes: int = Field(65_536, ge=256, le=4_194_304)

    @model_validator(mode="before")
    @classmethod
    def _default_cancellable(cls, data: Any) -> Any:
        """``cancellable`` left out: a GET may be cancelled, a call that changes things not."""
        if isinstance(data, dict) and data.get("cancellable") is None:
            return {**data, "cancellable": data.get("method", "GET") == "GET"}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOOL_NAME.match(value):
            raise ValueError("tool names use letters, digits and _ only")
        return value

    @field_validator("headers_from_env")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for header, env in value.items():
            if not _HEADER_NAME.match(header):
                raise ValueError(f"invalid header name {header!r}")
            if not _ENV_NAME.match(env):
                raise ValueError(f"header {header}: {env!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HttpToolConfig:
        if self.parameters.get("type") != "object":
            raise ValueError("parameters must be a schema of type object")
        try:
            check_schema(self.parameters)
        except SchemaError as exc:
            raise ValueError(f"parameters: {exc}") from exc
        parts = urlsplit(self.url.replace("{", "x").replace("}", "x"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http:// or https:// URL")
        origin_end = self.url.find("/", len(parts.scheme) + 3)
        origin = self.url if origin_end < 0 else self.url[:origin_end]
        if "{" in origin or "}" in origin:
            raise ValueError("url placeholders may stand only in the path and query")
        properties = self.parameters.get("properties", {})
        for name in url_fields(self.url):
            if name not in properties:
                raise ValueError(f"url placeholder {{{name}}} is not a declared parameter")
            if name not in self.parameters.get("required", []):
                raise ValueError(f"url placeholder {{{name}}} must be a required parameter")
        return self

    @property
    def completed_action(self) -> str | None:
        """The action name a success reports (see ``action``)."""
        if self.action is None:
            return None
        return self.action or self.name


class ToolsConfig(_Section):
    """How replies use tools, and the HTTP tools this agent offers."""

    max_steps: int = Field(3, ge=1, le=10)
    """Rounds of tool calls per reply; the model's last request offers no tools, so
    a reply always ends in words."""
    filler_after_ms: int = Field(400, ge=0, le=10_000)
    """A round of tools still running this long makes the agent say its filler
    (once per reply, and only when nothing else is playing)."""
    filler: str = Field("One moment.", min_length=1, max_length=200)
    clarification: str = Field(
        "Sorry, I didn't understand that. Could you say it another way?",
        min_length=1,
        max_length=300,
    )
    """Said when the model's tool calls stay unusable (unknown tool, bad arguments)
    and it never answers in words."""
    http: tuple[HttpToolConfig, ...] = ()

    def to_settings(self) -> ToolSettings:
        """Hot-path settings of the reply loop."""
        return ToolSettings(
            max_steps=self.max_steps,
            filler_after_s=self.filler_after_ms / 1000,
            filler=self.filler,
            clarification=self.clarification,
        )

    @model_validator(mode="after")
    def _unique(self) -> ToolsConfig:
        names = [t.name for t in self.http]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate tool name(s): {', '.join(duplicates)}")
        return self
