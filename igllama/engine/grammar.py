"""Grammars (llama.cpp's GBNF) that make a reply valid by construction.

- Structured output: a reply that is JSON matching a JSON Schema
  (`json_grammar`).
- Forced tool calls: with `tool_choice` "required" or a named function the
  reply is pre-filled with the opening of a Hermes call
  (`tools.CALL_OPENING`); the grammar then allows only a declared tool's
  name, arguments that match its `parameters` schema, and the call's end.

Schemas go through llama-cpp-python's JSON Schema converter
(`llama_cpp.llama_grammar`, pure Python), the one llama-server's was ported
from. A schema it cannot enforce is refused, never ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from igllama.engine.errors import InputError
from igllama.engine.schema_limits import check_schema
from igllama.engine.tool_calls import CLOSE, OPEN
from igllama.engine.tools import AFTER_NAME, CALL_OPENING, ToolChoice, ToolSpec


class SchemaError(InputError):
    """A JSON Schema that cannot be turned into a grammar; `param` names where it came from."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def json_grammar(schema: Mapping[str, Any], param: str) -> str:
    """The GBNF of JSON text matching `schema`; `param` names the schema's field in errors."""
    converter = _converter()
    rule = _visit(converter, schema, "output", param, "the schema")
    return f"{converter.format_grammar()}\nroot ::= {rule}\n"


def forced_call_grammar(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
    """The GBNF for the rest of a forced call, after `choice.forced_opening()`
    (which, for a named function, already holds the name)."""
    converter = _converter()
    chosen = [(i, tool) for i, tool in enumerate(tools) if choice.name in (None, tool.name)]
    branches = _call_bodies(converter, chosen, with_name=choice.name is None)
    return f"{converter.format_grammar()}\nroot ::= ({' | '.join(branches)}) {_literal(_CALL_END)}\n"


def auto_call_grammar(tools: Sequence[ToolSpec]) -> str:
    """The GBNF of one or more Hermes calls, for a lazy grammar that engages when
    the model opens a call (`tool_choice` "auto"): a call it starts is a valid one."""
    converter = _converter()
    branches = _call_bodies(converter, list(enumerate(tools)), with_name=True)
    call = (f"{_literal(OPEN)} call-space {_literal(CALL_OPENING[len(OPEN) + 1 :])} ({' | '.join(branches)}) "
            f"{_literal('}')} call-space {_literal(CLOSE)}")
    return (f"{converter.format_grammar()}\ncall-space ::= [ \\t\\n]*\ntool-call ::= {call}\n"
            "root ::= tool-call (call-space tool-call)*\n")


def _call_bodies(converter: SchemaConverter, tools: list[tuple[int, ToolSpec]], with_name: bool) -> list[str]:
    """For each tool, what follows `{"name": "` in a call: its name, then arguments matching its
    schema (the arguments alone when the name is already written)."""
    bodies = []
    for i, tool in tools:
        arguments = _visit(converter, tool.parameters, f"tool{i}-arguments", f"tools[{i}].function.parameters",
                           f"the parameters schema of tool {tool.name!r}")
        bodies.append(f"{_literal(tool.name + AFTER_NAME)} {arguments}" if with_name else arguments)
    return bodies


_CALL_END = "}\n" + CLOSE

# White space between JSON tokens as llama.cpp's own converter allows it (a
# newline or two and indentation), not just one optional space: models like
# to pretty-print, and every token the grammar refuses costs a pass of the
# grammar over the whole vocabulary (~36 ms for the demo model's 262k).
_SPACE = '| " " | "\\n"{1,2} [ \\t]{0,20}'


def _converter() -> SchemaConverter:
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    converter._rules["space"] = _SPACE
    return converter


def _visit(converter: SchemaConverter, schema: Mapping[str, Any], name: str, param: str, what: str) -> str:
    """Add the rules of `schema` to `converter`; the name of its top rule."""
    check_schema(schema, param)  # (before the converter, whose cost grows without bound)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(dict(schema))), name)
        return str(converter.visit(resolved, name))
    except Exception as exc:  # noqa: BLE001 - the converter raises whatever a schema provokes
        raise SchemaError(f"{what} cannot be enforced: {type(exc).__name__}: {exc}", param) from None


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text)
