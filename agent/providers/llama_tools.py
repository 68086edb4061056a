"""Tool calls for the local llama.cpp model: a grammar from the tools' schemas, a prompt, a parser.

llama.cpp's generic chat handlers never parse tool calls out of a reply, and
SmolLM2's chat template ignores ``tools``. So when tools are offered, the
model is told about them in the system message and its sampling is
constrained by a GBNF grammar generated from the tools' JSON schemas
(``llama_cpp.llama_grammar.SchemaConverter``), in one of two formats:

``call_or_text`` (default)
    An answer is a JSON call of one tool, or plain text that does not
    start with ``{``.
``call_or_say``
    Every answer is one JSON object ``{"name": ..., "arguments": {...}}``
    whose name is one of the tools or ``say`` (``{"text": "..."}``: an answer
    in words). The model only chooses a name among a few, which small models
    do far better than deciding on their own to write JSON.

bench/tools_eval.py, SmolLM2-135M, 36 music commands and 8 questions:
``call_or_text`` never starts a call (0/36 right tools) and answers every
question in words; ``call_or_say`` picks the right tool for 18/36 (right
arguments 10/36) but also "acts" on 7 of the 8 questions. The default is the
one that never does a wrong action; ``llm.tool_format`` in the agent YAML
chooses, and a larger GGUF or a cloud LLM is the answer for quality.

Either way the output is always a call of an offered tool whose arguments
fit its schema, or words: ``ToolOutput`` turns it into ``ToolCallDelta`` /
``TextDelta``s as the cloud adapters emit them, streaming the words of a
``say`` (or plain text) as they come. Strings without ``maxLength`` are
capped at ``STRING_CAP`` characters in the grammar (never more: llama.cpp's
parser nests one level per character), so a call fits the token budget.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

from llama_cpp.llama_grammar import LlamaGrammar, SchemaConverter

from agent.llm import LLMDelta, TextDelta, ToolCallDelta, ToolSpec

ToolFormat = Literal["call_or_say", "call_or_text"]

SAY = "say"
"""The pseudo-tool of an answer in words (``call_or_say``)."""
STRING_CAP = 80
"""Grammar cap on string arguments without their own ``maxLength``."""
CALL_MAX_TOKENS = 160
"""Token budget of a request that may produce a call (words stay within the caller's)."""

_SAY_PREFIX = re.compile(
    r'^\{\s*"name"\s*:\s*"(?P<name>[^"]*)"\s*,\s*"arguments"\s*:\s*\{\s*"text"\s*:\s*"'
)
_NAME = re.compile(r'"name"\s*:\s*"(?P<name>[A-Za-z0-9_]{1,64})"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": " ", "r": " ", "t": " "}


def say_name(tools: Sequence[ToolSpec]) -> str:
    """The name of the words pseudo-tool: ``say`` unless a real tool took it."""
    names = {t.name for t in tools}
    name = SAY
    while name in names:
        name = f"{name}_words"
    return name


def _capped(schema: Any) -> Any:
    """A copy of ``schema`` with ``STRING_CAP`` on strings that have no bound of their own."""
    if isinstance(schema, dict):
        out = {k: _capped(v) for k, v in schema.items()}
        bounded = any(k in out for k in ("maxLength", "enum", "const", "pattern"))
        unbounded_string = out.get("type") == "string" and not bounded
        too_long = isinstance(out.get("maxLength"), int) and out["maxLength"] > STRING_CAP
        if unbounded_string or too_long:
            out["maxLength"] = STRING_CAP
        return out
    if isinstance(schema, list):
        return [_capped(v) for v in schema]
    return copy.deepcopy(schema)


def grammar_text(tools: Sequence[ToolSpec], fmt: ToolFormat = "call_or_text") -> str:
    """The GBNF grammar of an answer offering ``tools`` (see the module doc)."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": _capped(dict(t.parameters))},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    if fmt == "call_or_say":
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": say_name(tools)},
                    "arguments": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}},
                        "required": ["text"],
                    },
                },
                "required": ["name", "arguments"],
            }
        )
    converter = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={"name": 0, "arguments": 1, "text": 2},
        allow_fetch=False,
        dotall=False,
        raw_pattern=False,
    )
    schema = converter.resolve_refs({"oneOf": calls}, "tools")
    converter.visit(schema, "call")  # type: ignore[no-untyped-call]
    rules: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    if fmt == "call_or_say":
        return f"{rules}\nroot ::= call\n"
    return f"{rules}\nroot ::= call | words\nwords ::= [^{{ \\t\\n] [^\\n]*\n"


@lru_cache(maxsize=16)
def _grammar(key: str, fmt: ToolFormat) -> LlamaGrammar:
    specs = [ToolSpec(t["name"], t["description"], t["parameters"]) for t in json.loads(key)]
    return LlamaGrammar.from_string(grammar_text(specs, fmt), verbose=False)


def grammar(tools: Sequence[ToolSpec], fmt: ToolFormat = "call_or_text") -> LlamaGrammar:
    """The compiled grammar for ``tools`` (cached: agents offer the same tools each turn)."""
    key = json.dumps(
        [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
        sort_keys=True,
    )
    return _grammar(key, fmt)


def _signature(spec: ToolSpec) -> str:
    props: Mapping[str, Any] = spec.parameters.get("properties", {})
    required = set(spec.parameters.get("required", []))
    args = ", ".join(
        f'"{name}": {p.get("type", "value")}{"" if name in required else " (optional)"}'
        for name, p in props.items()
    )
    return f"{spec.name}: {spec.description} Arguments: {{{args}}}"


def tool_prompt(tools: Sequence[ToolSpec], fmt: ToolFormat = "call_or_text") -> str:
    """The system-message text that tells the model about ``tools`` and the format."""
    lines = [_signature(t) for t in tools]
    if fmt == "call_or_say":
        say = say_name(tools)
        lines.append(f'{say}: answer the user in words. Arguments: {{"text": string}}')
        head = "Answer with one JSON object that calls one of these functions:"
        return "\n".join([head, *lines])
    example = json.dumps({"name": tools[0].name, "arguments": {}}) if tools else "{}"
    return "\n".join(
        [
            "You can use these tools:",
            *lines,
            f"To use a tool, answer only with a JSON object such as {example}.",
            "Otherwise answer in words.",
        ]
    )


class ToolOutput:
    """Turns the constrained model's text, piece by piece, into LLM deltas.

    Words (a ``say`` call's text, or plain text) stream out as ``TextDelta``s
    while they are generated; a tool call is emitted whole at the end as one
    ``ToolCallDelta``. A call cut short by the token limit is still emitted
    (with the arguments as written): the reply loop reports the bad
    arguments to the model.
    """

    def __init__(self, tools: Sequence[ToolSpec], fmt: ToolFormat = "call_or_text") -> None:
        self._say = say_name(tools) if fmt == "call_or_say" else None
        self._buffer = ""
        self._mode: Literal["start", "text", "call", "say", "said"] = "start"
        self._escape = ""
        self.words = 0
        """Pieces of words emitted (the caller's ``max_tokens`` bounds them)."""

    @property
    def speaking(self) -> bool:
        """Whether the output turned out to be words."""
        return self._mode in ("text", "say", "said")

    def feed(self, piece: str) -> list[LLMDelta]:
        """The deltas ``piece`` completes."""
        if self._mode == "text":
            self.words += 1
            return [TextDelta(piece)]
        if self._mode == "say":
            return self._say_text(piece)
        if self._mode == "said":
            return []
        self._buffer += piece
        if self._mode == "start":
            head = self._buffer.lstrip()
            if not head:
                return []
            if not head.startswith("{"):
                self._mode = "text"
                self.words += 1
                return [TextDelta(head)]
            self._mode = "call"
        if self._say is not None:
            match = _SAY_PREFIX.match(self._buffer.lstrip())
            if match is not None and match.group("name") == self._say:
                rest = self._buffer.lstrip()[match.end() :]
                self._mode = "say"
                return self._say_text(rest)
        return []

    def _say_text(self, piece: str) -> list[LLMDelta]:
        """Decode a JSON string's characters until its closing quote."""
        out: list[str] = []
        text = self._escape + piece
        self._escape = ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == '"':
                self._mode = "said"
                break
            if ch == "\\":
                if i + 1 >= len(text):
                    self._escape = text[i:]
                    break
                code = text[i + 1]
                if code == "u":
                    if i + 6 > len(text):
                        self._escape = text[i:]
                        break
                    digits = text[i + 2 : i + 6]
                    if all(c in "0123456789abcdefABCDEF" for c in digits):
                        out.append(chr(int(digits, 16)))
                    i += 6
                    continue
                out.append(_ESCAPES.get(code, code))
                i += 2
                continue
            out.append(ch)
            i += 1
        words = "".join(out)
        if not words:
            return []
        self.words += 1
        return [TextDelta(words)]

    def finish(self) -> list[LLMDelta]:
        """The deltas left at the end of the output: the tool call, if it was one."""
        if self._mode != "call":
            return []
        raw = self._buffer.strip()
        call_id = "call_" + secrets.token_hex(6)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            match = _NAME.search(raw)
            name = match.group("name") if match else None
            return [ToolCallDelta(0, call_id, name, raw)]
        if not isinstance(value, dict):
            return [ToolCallDelta(0, call_id, None, raw)]
        name = value.get("name")
        arguments = value.get("arguments", {})
        return [
            ToolCallDelta(
                0,
                call_id,
                name if isinstance(name, str) else None,
                json.dumps(arguments, ensure_ascii=False),
            )
        ]
