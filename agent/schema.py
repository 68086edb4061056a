"""The JSON-schema subset tool parameters are written in, and checking arguments against it.

Tool parameters (``agent.tools``) are JSON Schema objects. Models fill them
in, and small ones often get them wrong, so every call's arguments are
checked here before a handler runs. The subset is what function-calling
APIs document and what llama.cpp's grammar converter supports:

* ``type`` (``object``, ``array``, ``string``, ``integer``, ``number``,
  ``boolean``, ``null``, or a list of them), ``enum``, ``const``;
* objects: ``properties``, ``required``, ``additionalProperties`` (a bool or
  a schema);
* strings: ``minLength``, ``maxLength``, ``pattern`` (searched, as JSON
  Schema says);
* numbers: ``minimum``, ``maximum``, ``exclusiveMinimum``,
  ``exclusiveMaximum``;
* arrays: ``items``, ``minItems``, ``maxItems``;
* annotations that change nothing: ``description``, ``title``,
  ``default``, ``examples``.

``check_schema`` refuses any other keyword when a tool is registered, so a
schema is never silently half-enforced. ``argument_errors`` lists what is
wrong with a value, each problem with its JSON path, in words a model can
act on (``"query: expected a string, got 12"``); booleans are not numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

MAX_ERRORS = 5
"""Problems reported per value (the rest would only lengthen the model's prompt)."""

_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})
_KEYWORDS = _ANNOTATIONS | {
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "items",
    "minItems",
    "maxItems",
}


class SchemaError(ValueError):
    """A schema that uses something outside the supported subset, or is malformed."""


def check_schema(schema: Mapping[str, Any], path: str = "$") -> None:
    """Raise ``SchemaError`` unless ``schema`` lies within the supported subset."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{path}: a schema must be an object")
    unknown = sorted(set(schema) - _KEYWORDS)
    if unknown:
        raise SchemaError(f"{path}: unsupported keyword(s) {', '.join(unknown)}")
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not isinstance(names, list) or not names or any(t not in _TYPES for t in names):
            raise SchemaError(f"{path}: type must be one of {sorted(_TYPES)} or a list of them")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise SchemaError(f"{path}: enum must be a non-empty list")
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        raise SchemaError(f"{path}: properties must be an object")
    for name, sub in props.items():
        check_schema(sub, f"{path}.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{path}: required must be a list of names")
    extra = schema.get("additionalProperties", True)
    if isinstance(extra, Mapping):
        check_schema(extra, f"{path}.*")
    elif not isinstance(extra, bool):
        raise SchemaError(f"{path}: additionalProperties must be a bool or a schema")
    if "items" in schema:
        check_schema(schema["items"], f"{path}[]")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            raise SchemaError(f"{path}: pattern is not a regular expression") from exc
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (not isinstance(schema[key], int) or schema[key] < 0):
            raise SchemaError(f"{path}: {key} must be a non-negative integer")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and not _is_number(schema[key]):
            raise SchemaError(f"{path}: {key} must be a number")


def argument_errors(schema: Mapping[str, Any], value: Any) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (empty: it conforms), at most
    ``MAX_ERRORS`` problems."""
    errors: list[str] = []
    _validate(schema, value, "", errors)
    return errors[:MAX_ERRORS]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_matches(name: str, value: Any) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        return _is_number(value) and float(value).is_integer()
    if name == "number":
        return _is_number(value)
    if name == "boolean":
        return isinstance(value, bool)
    return value is None


def _describe(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _validate(schema: Mapping[str, Any], value: Any, path: str, errors: list[str]) -> None:
    if len(errors) >= MAX_ERRORS:
        return
    where = path or "arguments"
    types = schema.get("type")
    if types is not None:
        names: Sequence[str] = [types] if isinstance(types, str) else types
        if not any(_type_matches(n, value) for n in names):
            wanted = " or ".join(f"a{'n' if n[0] in 'aeiou' else ''} {n}" for n in names)
            errors.append(f"{where}: expected {wanted}, got {_describe(value)}")
            return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(repr(v) for v in schema["enum"])
        errors.append(f"{where}: must be one of {choices}, got {_describe(value)}")
    if isinstance(value, str):
        _check_string(schema, value, where, errors)
    elif _is_number(value):
        _check_number(schema, value, where, errors)
    elif isinstance(value, list):
        _check_array(schema, value, path, errors)
    elif isinstance(value, dict):
        _check_object(schema, value, path, errors)


def _check_string(schema: Mapping[str, Any], value: str, where: str, errors: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{where}: must have at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{where}: must have at most {schema['maxLength']} characters")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        errors.append(f"{where}: does not match the pattern {schema['pattern']!r}")


def _check_number(schema: Mapping[str, Any], value: float, where: str, errors: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: must be at least {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{where}: must be at most {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        errors.append(f"{where}: must be more than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        errors.append(f"{where}: must be less than {schema['exclusiveMaximum']}")


def _check_array(schema: Mapping[str, Any], value: list[Any], path: str, errors: list[str]) -> None:
    where = path or "arguments"
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{where}: must have at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{where}: must have at most {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            _validate(items, item, f"{path}[{i}]", errors)


def _check_object(
    schema: Mapping[str, Any], value: dict[str, Any], path: str, errors: list[str]
) -> None:
    props: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{_join(path, name)}: is required")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            _validate(props[name], item, _join(path, name), errors)
        elif extra is False:
            allowed = ", ".join(props) or "none"
            errors.append(f"{_join(path, name)}: is not a known argument (known: {allowed})")
        elif isinstance(extra, Mapping):
            _validate(extra, item, _join(path, name), errors)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
