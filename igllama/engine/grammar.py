"""Grammars (llama.cpp's GBNF) that make a forced tool call valid by construction.

With `tool_choice` "required" or a named function the reply is pre-filled
with the opening of a Hermes call (`tools.CALL_OPENING`); the grammar then
allows only a declared tool's name, arguments that match its `parameters`
JSON Schema, and the call's end. The schema goes through llama-cpp-python's
JSON Schema converter (`llama_cpp.llama_grammar`, pure Python), the one
llama-server's converter was ported from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from llama_cpp.llama_grammar import SchemaConverter

from igllama.engine.errors import InputError
from igllama.engine.tool_calls import CLOSE
from igllama.engine.tools import ToolChoice, ToolSpec


class SchemaError(InputError):
    """A JSON Schema that cannot be turned into a grammar; `param` names where it came from."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def forced_call_grammar(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
    """The GBNF for the rest of a forced call, after `choice.forced_opening()`."""
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    branches = []
    for i, tool in enumerate(tools):
        if choice.name is not None and tool.name != choice.name:
            continue
        try:
            schema = converter.resolve_refs(json.loads(json.dumps(dict(tool.parameters))), f"tool{i}")
            arguments = converter.visit(schema, f"tool{i}-arguments")
        except Exception as exc:  # noqa: BLE001 - the converter raises whatever a schema provokes
            raise SchemaError(
                f"the parameters schema of tool {tool.name!r} cannot be enforced: {type(exc).__name__}: {exc}",
                f"tools[{i}].function.parameters",
            ) from None
        if choice.name is not None:
            branches.append(arguments)
        else:
            after_name = '", "arguments": '
            branches.append(f"{_literal(tool.name + after_name)} {arguments}")
    rules = converter.format_grammar()
    end = _literal("}\n" + CLOSE)
    return f"{rules}\nroot ::= ({' | '.join(branches)}) {end}\n"


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text)
