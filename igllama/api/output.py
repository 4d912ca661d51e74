"""Structured output on the wire: `response_format` (OpenAI) and llama-server's `json_schema` and `grammar`.

Each becomes a GBNF grammar for the engine's sampler: a schema is handed over as
an `OutputSchema` and converted off the event loop. A schema that cannot be
enforced is a 400 naming its field, never a silently unconstrained reply.
"""

from __future__ import annotations

from typing import Any

from igllama.api.errors import APIError
from igllama.engine import OutputSchema

ANY_OBJECT = {"type": "object"}


def parse_output_format(data: dict[str, Any]) -> str | OutputSchema:
    """The GBNF or schema a reply must follow, "" when it is free text."""
    given = [name for name in ("response_format", "json_schema", "grammar") if data.get(name) is not None]
    if len(given) > 1:
        raise APIError(400, f"give one of {', '.join(given)}, not several", param=given[1])
    if "response_format" in given:
        return _response_format(data["response_format"])
    if "json_schema" in given:
        return schema_grammar(data["json_schema"], "json_schema")
    if "grammar" in given:
        if not isinstance(data["grammar"], str) or not data["grammar"].strip():
            raise APIError(400, "grammar must be a GBNF grammar (a string with a `root` rule)", param="grammar")
        return str(data["grammar"])
    return ""


def _response_format(raw: Any) -> str | OutputSchema:
    if not isinstance(raw, dict):
        raise APIError(400, "response_format must be an object with a type", param="response_format")
    kind = raw.get("type")
    if kind == "text":
        return ""
    if kind == "json_object":
        return OutputSchema(ANY_OBJECT, "response_format")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict):
            raise APIError(400, "response_format.json_schema must be an object with a schema",
                           param="response_format.json_schema")
        where = "response_format.json_schema.schema"
        return schema_grammar(spec.get("schema", ANY_OBJECT), where)
    raise APIError(400, f"response_format.type must be text, json_object or json_schema, not {kind!r}",
                   param="response_format.type")


def _schema(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise APIError(400, f"{where} must be a JSON Schema object", param=where)
    return raw


def schema_grammar(raw: Any, where: str) -> OutputSchema:
    """JSON matching the schema `raw`, given in the field `where` (converted by the engine)."""
    return OutputSchema(_schema(raw, where), where)
