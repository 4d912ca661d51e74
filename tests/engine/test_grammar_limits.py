"""Grammars and schemas llama.cpp or the schema converter would crash or stall on are refused first.

Pure units, and two subprocesses (a crash must not take pytest down) that show
llama.cpp compiling grammars at the limits, and crashing on what is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from igllama.engine.gbnf_limits import (
    MAX_EXPANSION,
    MAX_GRAMMAR_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_REPETITION,
    MAX_RULES,
    GrammarLimitError,
    check_gbnf,
)
from igllama.engine.grammar import auto_call_grammar, forced_call_grammar, json_grammar
from igllama.engine.schema_limits import (
    MAX_ENUM_VALUES,
    MAX_OPTIONAL_PROPERTIES,
    MAX_OPTIONAL_REPETITION,
    MAX_PATTERN_DEPTH,
    MAX_PATTERN_LENGTH,
    MAX_SCHEMA_BRANCHES,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    MAX_SCHEMA_STRINGS,
    check_schema,
)
from igllama.engine.tools import ToolChoice, ToolSpec

P = "response_format.json_schema.schema"


def refused(grammar: str) -> str:
    with pytest.raises(GrammarLimitError) as info:
        check_gbnf(grammar)
    assert info.value.param == "grammar"
    return str(info.value)


def nested(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth + "\n"


def chain(n: int, after: str = "") -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}{after}\n" for i in range(n)) + f'r{n} ::= "a"\n'


JSON_GBNF = r'''
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
'''

ORDINARY_GRAMMARS = [
    JSON_GBNF,
    'root ::= "a" ("b" | "c")*\n',
    "root ::= expr\r\nexpr ::= term ((\"+\" | \"-\") term)*\r\nterm ::= [0-9]+ | \"(\" expr \")\"\r\n",
    'root ::= item+\nitem ::= "- " [^\\n]+ "\\n"\n',
    'root ::= <[12]> !<[13]>* "\\u00e9\\x41\\U0001F600" [\\]\\-a-z]?\n',
    'root ::= ("a"?)* "b"\n',  # a loop through a rule that may match nothing, at the end of it
    'root ::= ("a"{1000}){1000}\n',  # groups repeated as rules, not copied
    'root ::= "a"{0,5000}\n',  # llama.cpp reads a maximum beyond its threshold as none
    nested(MAX_NESTING_DEPTH),
    chain(MAX_EXPANSION - 100),
    "root ::= " + " | ".join(f'"{i}"' for i in range(MAX_EXPANSION - 10)) + "\n",
]


@pytest.mark.parametrize("grammar", ORDINARY_GRAMMARS)
def test_ordinary_grammars_and_grammars_at_the_limits_are_accepted(grammar: str) -> None:
    check_gbnf(grammar)


def test_a_grammar_too_long_is_refused() -> None:
    assert str(MAX_GRAMMAR_LENGTH) in refused('root ::= "' + "a" * MAX_GRAMMAR_LENGTH + '"')


def test_nesting_deeper_than_llama_cpp_can_recurse_is_refused_even_before_a_syntax_error() -> None:
    assert str(MAX_NESTING_DEPTH) in refused(nested(MAX_NESTING_DEPTH + 1))
    assert str(MAX_NESTING_DEPTH) in refused("root ::= " + "(" * 50_000 + '"a"' + ")" * 50_000)
    refused("root ::= " + "(" * 5000 + " ::= garbage")  # llama.cpp recurses before it meets the error
    check_gbnf('root ::= "a" )' + "(" * 5000)  # llama.cpp stops at ")": nothing deep is read


@pytest.mark.parametrize("grammar, words", [
    ('root ::= "a"{2001}', str(MAX_REPETITION)),
    ('root ::= x{2001,}\nx ::= "a"', str(MAX_REPETITION)),
    ('root ::= "a"{5,3}', "maximum below its minimum"),  # llama.cpp would loop forever
    ('root ::= ("a"{0,100}){0,100}', "repeats a repetition"),
    ('root ::= "ab"{1000}{3}', "repeats a repetition"),
])
def test_repetitions_beyond_llama_cpps_threshold_are_refused(grammar: str, words: str) -> None:
    assert words in refused(grammar)


def test_what_repetitions_expand_to_is_counted_as_llama_cpp_counts_it() -> None:
    assert str(MAX_RULES) in refused("root ::= " + '"x"{0,2000} ' * (MAX_RULES // 2000 + 1))
    check_gbnf("root ::= " + '"x"{0,2000} ' * (MAX_RULES // 2000 - 1))
    assert "symbols" in refused('root ::= "' + "a" * 1100 + '"{2000}')


@pytest.mark.parametrize("grammar", [
    chain(MAX_EXPANSION + 10),  # detect_left_recursion recurses through it (70,000 overflow the stack)
    chain(MAX_EXPANSION + 10, ' "x"'),  # advance_stack copies a growing stack at each step
    "root ::= " + " | ".join(f'"{i}"' for i in range(MAX_EXPANSION + 10)),  # stacks compared pairwise
    "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} | r{i + 1} "x"\n' for i in range(12)) + 'r12 ::= "a"\n',
    "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1} | r{i + 1}\n" for i in range(30)) + 'r30 ::= "a"\n',
    "root ::= " + "(" * 30 + '"a"?' + ")+" * 30,  # each `+` of something that may be empty doubles
])
def test_positions_that_begin_in_too_many_ways_are_refused(grammar: str) -> None:
    assert f"more than {MAX_EXPANSION} ways" in refused(grammar)


@pytest.mark.parametrize("grammar", [
    'root ::= root "a" | "b"',
    'root ::= b root "x" | "y"\nb ::= c\nc ::= "z" |',  # llama.cpp misses it, then loops forever
    'root ::= a\na ::= b | b "x"\nb ::= a | "y"',
])
def test_left_recursion_is_refused(grammar: str) -> None:
    assert "left-recursive" in refused(grammar)


def test_a_root_mentioned_but_not_defined_is_refused() -> None:
    # `root` only in a rule later redefined: llama.cpp finds the name, then reads past its rules
    assert "`root`" in refused('x ::= y root\nx ::= "q"\ny ::= "r"\n')


@pytest.mark.parametrize("grammar", ['root ::= "a', "root ::= (", 'root ::= "\\q"', "root ::= *",
                                     'root ::= "a"\n  | "b"', 'x ::= "a"', 'root ::= x\nx ::= zzz\n'])
def test_malformed_grammars_are_left_to_llama_cpp(grammar: str) -> None:
    check_gbnf(grammar)  # llama.cpp refuses them itself (NULL), without going deeper


def test_the_param_is_the_callers() -> None:
    with pytest.raises(GrammarLimitError) as info:
        check_gbnf('root ::= "a"{3000}', "format")
    assert info.value.param == "format"


# --- schemas ---

def obj(properties: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": properties, **({"required": list(properties)} if required else {})}


REALISTIC_SCHEMAS: list[dict[str, Any]] = [
    obj({"name": {"type": "string", "maxLength": 100}, "age": {"type": "integer", "minimum": 0},
         "email": {"type": "string", "format": "email"}, "born": {"type": "string", "format": "date"},
         "id": {"type": "string", "format": "uuid"},
         "tags": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 10},
         "address": obj({"street": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"}},
                        required=False)}),
    {"$defs": {"Item": obj({"sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}}),
               "Status": {"enum": ["new", "paid", "shipped", "cancelled"]}},
     "type": "object", "required": ["items", "status"],
     "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
                    "status": {"$ref": "#/$defs/Status"}, "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "when": {"type": "string", "format": "date-time"}}},
    {"type": "object", "properties": {"tree": {"$ref": "#/$defs/node"}},
     "$defs": {"node": obj({"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}})}},
    {"allOf": [{"$ref": "#/$defs/base"}, {"properties": {"extra": {"type": "boolean"}}}],
     "$defs": {"base": {"properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}}},
    {"oneOf": [obj({"kind": {"const": "circle"}, "r": {"type": "number"}}),
               obj({"kind": {"const": "rect"}, "w": {"type": "number"}, "h": {"type": "number"}})]},
    {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}, {"enum": ["N", "S"]}]},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "string", "pattern": "^[a-zA-Z0-9._%+-]{1,64}@[a-zA-Z0-9.-]{1,253}\\.[a-zA-Z]{2,63}$"},
    {"type": ["string", "null"]},
]

# Schemas at the limits, each the worst of its kind for the grammar's size or the converter's time
AT_THE_LIMITS: list[dict[str, Any]] = [
    {"type": "array", "items": {"type": "integer"}, "minItems": MAX_REPETITION - MAX_OPTIONAL_REPETITION,
     "maxItems": MAX_REPETITION},
    obj({f"f{i}": {"type": "string", "maxLength": MAX_OPTIONAL_REPETITION} for i in range(26)}),
    {"enum": ["\x01" * 18 + f"{i:04}" for i in range(MAX_ENUM_VALUES)]},  # each \x01 written \u0001
    {"anyOf": [obj({"k": {"const": i}}) for i in range(500)]},
    obj({f"o{j}": obj({f"p{i}": {"type": "string"} for i in range(MAX_OPTIONAL_PROPERTIES)}, required=False)
         for j in range(14)}),
    obj({f"p{i}": {"type": "string"} for i in range(1700)}),
    {"type": "string", "pattern": "^" + "(" * MAX_PATTERN_DEPTH + "a{0,1000}" + ")" * MAX_PATTERN_DEPTH + "$"},
    {"type": "string", "pattern": "^" + "a?" * ((MAX_PATTERN_LENGTH - 2) // 2) + "$"},
    {"type": "string", "pattern": "^" + "[a-z]{0,1000}" * 9 + "$"},
]


@pytest.mark.parametrize("schema", REALISTIC_SCHEMAS + AT_THE_LIMITS)
def test_schemas_accepted_give_grammars_accepted(schema: dict[str, Any]) -> None:
    check_schema(schema, P)
    check_gbnf(json_grammar(schema, P))
    if schema.get("type") == "object":  # as a tool's parameters
        tools = [ToolSpec("f", "a tool", schema)]
        check_gbnf(auto_call_grammar(tools))
        check_gbnf(forced_call_grammar(tools, ToolChoice("required")))


def deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth - 1):
        schema = obj({"a": schema})
    return schema


@pytest.mark.parametrize("schema, field, words", [
    ({"type": "array", "items": {"type": "integer"}, "minItems": 10_000_000}, "minItems", str(MAX_REPETITION)),
    (obj({"items": {"type": "array", "items": {"type": "string"}, "minItems": 10_000_000}}),
     "properties.items.minItems", str(MAX_REPETITION)),
    ({"type": "string", "minLength": 10_000_000}, "minLength", str(MAX_REPETITION)),
    ({"type": "string", "format": "email", "maxLength": 100_000}, "maxLength", str(MAX_REPETITION)),
    ({"type": "string", "maxLength": MAX_OPTIONAL_REPETITION + 1}, "maxLength", str(MAX_OPTIONAL_REPETITION)),
    ({"type": "array", "items": {}, "minItems": 5, "maxItems": 1006}, "maxItems", str(MAX_OPTIONAL_REPETITION)),
    ({"type": "string", "pattern": "^a{1000000}$"}, "pattern", str(MAX_REPETITION)),
    ({"type": "string", "pattern": "^a{0,1001}$"}, "pattern", str(MAX_OPTIONAL_REPETITION)),
    ({"type": "string", "pattern": "^" + "a" * MAX_PATTERN_LENGTH + "$"}, "pattern", str(MAX_PATTERN_LENGTH)),
    ({"type": "string", "pattern": "^" + "(" * 33 + "a" + ")" * 33 + "$"}, "pattern", str(MAX_PATTERN_DEPTH)),
    ({"type": "string", "pattern": "^a]$"}, "pattern", "loop forever"),
    ({"type": "string", "pattern": "^((a?){2}){2}$"}, "pattern", "empty string"),
    ({"enum": [f"value {i}" for i in range(100_000)]}, "enum", str(MAX_ENUM_VALUES)),
    (obj({"a": {"enum": list(range(600))}, "b": {"enum": list(range(600))}}), "properties.b.enum", str(MAX_ENUM_VALUES)),
    ({"enum": ["x" * 200] * 700}, "enum", str(MAX_SCHEMA_STRINGS)),
    (deep(MAX_SCHEMA_DEPTH + 1), ".properties.a" * MAX_SCHEMA_DEPTH, str(MAX_SCHEMA_DEPTH)),
    ({"anyOf": [{"type": "integer"}] * (MAX_SCHEMA_NODES + 1)}, "]", str(MAX_SCHEMA_NODES)),
    ({"anyOf": [obj({"k": {"type": "string"}})] * 600}, "", str(MAX_SCHEMA_BRANCHES)),
    (obj({f"p{i}": {"type": "string"} for i in range(MAX_OPTIONAL_PROPERTIES + 1)}, required=False),
     "properties", str(MAX_OPTIONAL_PROPERTIES)),
    (obj({"x" + "_" * i: {"type": "string"} for i in range(1, 18)}), "properties", "rule name"),
    (obj({f"f{i}": {"type": "string", "maxLength": 1000} for i in range(40)}), "maxLength", "grammar would exceed"),
    ({"$ref": "https://example.com/schema.json"}, "$ref", "inside the schema"),
    ({"type": "object", "$defs": {"x": {"$ref": "other.json#/a"}}}, "$defs.x.$ref", "inside the schema"),
])
def test_each_schema_limit_is_refused_naming_the_field(schema: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(GrammarLimitError) as info:
        check_schema(schema, P)
    assert info.value.param.startswith(P) and info.value.param.endswith(field), info.value.param
    assert words in str(info.value)


def test_schemas_are_checked_before_conversion_with_their_field() -> None:
    from igllama.engine.grammar import SchemaError

    with pytest.raises(GrammarLimitError) as info:
        json_grammar({"type": "array", "items": {"type": "integer"}, "minItems": 10_000_000}, P)
    assert info.value.param == f"{P}.minItems"
    tool = ToolSpec("weather", "", obj({"cities": {"type": "array", "items": {"type": "string"}, "maxItems": 10**6}}))
    with pytest.raises(GrammarLimitError) as info:
        auto_call_grammar([tool])
    assert info.value.param == "tools[0].function.parameters.properties.cities.maxItems"
    with pytest.raises(SchemaError):  # what the converter refuses itself stays its refusal
        json_grammar({"type": "string", "pattern": "no anchors"}, P)


# --- llama.cpp itself, in a subprocess ---

COMPILE = textwrap.dedent("""
    import json, sys, threading, time
    import llama_cpp.llama_cpp as llama
    grammars = json.load(open(sys.argv[1]))
    results = []
    def compile_all():
        for grammar in grammars:
            started = time.perf_counter()
            sampler = llama.llama_sampler_init_grammar(None, grammar.encode(), b"root")
            results.append([bool(sampler), time.perf_counter() - started])
            if sampler:
                llama.llama_sampler_free(sampler)
    threading.stack_size(int(sys.argv[2]))  # the same stack whatever `ulimit -s` says
    thread = threading.Thread(target=compile_all)
    thread.start()
    thread.join()
    print(json.dumps(results))
""")


def compile_in_subprocess(grammars: list[str], stack: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "grammars.json"
    path.write_text(json.dumps(grammars))
    return subprocess.run([sys.executable, "-c", COMPILE, str(path), str(stack)], check=False,
                          capture_output=True, text=True, timeout=120)


def test_llama_cpp_compiles_grammars_at_the_limits_on_a_1_mib_stack(tmp_path: Path) -> None:
    grammars = [
        nested(MAX_NESTING_DEPTH),
        "root ::= " + '("a" ' * MAX_OPTIONAL_REPETITION + ")?" * MAX_OPTIONAL_REPETITION,  # the converter's
        chain(MAX_EXPANSION - 100),
        chain(MAX_EXPANSION - 100, ' "x"'),
        "root ::= " + " | ".join(f'"{i}"' for i in range(MAX_EXPANSION - 10)),
        "root ::= " + '"x"{0,2000} ' * (MAX_RULES // 2000 - 1),
        'root ::= "' + "a" * 999 + '"{2000}',
        *(json_grammar(schema, P) for schema in AT_THE_LIMITS),
    ]
    for grammar in grammars:
        check_gbnf(grammar)
    done = compile_in_subprocess(grammars, 1 << 20, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert [compiled for compiled, _ in results] == [True] * len(grammars), results
    assert max(seconds for _, seconds in results) < 5, results


def test_unchecked_llama_cpp_crashes_on_the_nested_grammar_check_gbnf_refuses(tmp_path: Path) -> None:
    grammar = "root ::= " + "(" * 50_000 + '"a"' + ")" * 50_000
    refused(grammar)
    done = compile_in_subprocess([grammar], 8 << 20, tmp_path)
    assert done.returncode < 0, (done.returncode, done.stdout, done.stderr[-500:])  # killed by SIGSEGV
