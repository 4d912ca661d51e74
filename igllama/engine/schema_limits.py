"""Limits that keep a JSON Schema's conversion to a grammar bounded.

llama-cpp-python's schema converter writes repetitions out in full
(`minItems: 10000000`: 23 s, 200 MiB), is quadratic in optional properties and
in property names escaping to one rule name, and loops forever on a pattern
with a stray `]` or `}`. `check_schema` refuses such a schema before the
converter sees it, in time linear in its size, with a `GrammarLimitError`
naming the field; a schema it accepts converts to a grammar `check_gbnf`
accepts. What the converter refuses cleanly on its own is left to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from igllama.engine.gbnf_limits import (
    MAX_GRAMMAR_LENGTH,
    MAX_REPETITION,
    MAX_RULES,
    GrammarLimitError,
)

# --- JSON Schema: OpenAI's structured outputs allow 10 levels, 5000 properties, 1000 enum values
# and 120,000 characters of names and values; looser here where it costs nothing ---
MAX_SCHEMA_DEPTH = 32  # subschemas inside subschemas, through $refs
MAX_SCHEMA_NODES = 10_000  # subschemas converted, a $ref converted again counted again
MAX_SCHEMA_VALUES = 200_000  # JSON values in the document (the converter walks them all)
MAX_ENUM_VALUES = 1000  # enum and const values in total
MAX_SCHEMA_STRINGS = 120_000  # characters (JSON-encoded) of property names, enum/const values, patterns
# The converter writes the optional part of a repetition as nested groups, `(x (x ...)?)?`, and
# llama.cpp refuses more than 1000 levels (its threshold counts two rules per level).
MAX_OPTIONAL_REPETITION = 1000
# In one object: the converter's work grows with the square of the optional properties (and
# recurses once per property, ~990 overflowing Python's recursion limit).
MAX_OPTIONAL_PROPERTIES = 64
MAX_SAME_RULE_NAME = 16  # property names escaping to one rule name (the converter renames in O(n^2))
MAX_PATTERN_LENGTH = 1000
MAX_PATTERN_DEPTH = 32
MAX_SCHEMA_BRANCHES = 2048  # ways a value can begin: enum values, anyOf/oneOf alternatives, types
# An upper bound of the schema's grammar, within check_gbnf's limits with room for what
# json_grammar and the tool-call grammars add around it.
MAX_SCHEMA_GRAMMAR = MAX_GRAMMAR_LENGTH - 16 * 1024
MAX_SCHEMA_RULES = MAX_RULES // 4


def check_schema(schema: Any, param: str) -> None:
    """Refuse a JSON Schema whose conversion would take unbounded time or memory, or give a grammar
    `check_gbnf` refuses, with a `GrammarLimitError` whose `param` is `param` and the path of the
    field inside the schema (`param.properties.items.minItems`).

    Walks the schema as llama-cpp-python's `SchemaConverter.visit` does (the branch it takes for
    each subschema, $refs followed), without recursion, stopping at the first limit exceeded.
    """
    if isinstance(schema, Mapping):
        walk = _SchemaWalk(schema, param)
        walk.count_values()
        walk.run()


# What the converter (llama_cpp/llama_grammar.py) does with names: escapes them with
# INVALID_RULE_CHARS_RE, and adds "-" to RESERVED_NAMES (so it cannot find again, and converts
# again at each use, a $ref whose name is reserved or escaped); in a pattern, NON_LITERAL_SET ends
# a run of literal characters.
_INVALID_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
_RESERVED = frozenset({"root", "dot", "boolean", "decimal-part", "integral-part", "number", "integer",
                       "value", "object", "array", "uuid", "char", "string", "null", "date", "time",
                       "date-time", "date-string", "time-string", "date-time-string"})
_NON_LITERAL = frozenset("|.()[]{}*+?")
_FORMAT = re.compile(r"uuid[1-5]?|date|time|date-time")
# Keys that make the converter write a rule named after the subschema (else it shares a primitive).
_OWN_RULE = frozenset({"$ref", "oneOf", "anyOf", "const", "enum", "properties", "additionalProperties",
                       "allOf", "items", "prefixItems", "pattern", "format", "minLength", "maxLength"})


def _named(node: Any) -> bool:
    return not isinstance(node, Mapping) or isinstance(node.get("type"), list) or not _OWN_RULE.isdisjoint(node)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Branches:
    """An anyOf/oneOf or $ref being walked: the ways its value can begin, summed from its children."""

    __slots__ = ("fans", "memo", "path", "ref", "sink")

    def __init__(self, path: str, sink: list[int] | None, ref: str | None = None, memo: str | None = None) -> None:
        self.path, self.sink, self.ref, self.memo = path, sink, ref, memo
        self.fans: list[int] = []


class _SchemaWalk:
    """A schema's walk, with what it counts and the converter's grammar estimated from above."""

    def __init__(self, root: Mapping[str, Any], param: str) -> None:
        self.root, self.param = root, param
        self.nodes = self.literals = self.strings = self.size = self.rules = 0
        self.rule_names: dict[str, set[str]] = {}  # escaped rule name -> the names escaping to it
        self.resolving: set[str] = set()  # the converter's _refs_being_resolved
        self.converted: dict[str, int] = {}  # $ref rule name -> the ways its value begins

    def fail(self, path: str, message: str) -> GrammarLimitError:
        return GrammarLimitError(message, path)

    def count_values(self) -> None:
        """Every JSON value (the converter's resolve_refs walks them all), and no $ref but a local
        one: the converter would fetch a remote one when asserts are off (python -O)."""
        todo: list[tuple[Any, str]] = [(self.root, self.param)]
        n_values = 0
        while todo:
            value, path = todo.pop()
            n_values += len(value)
            if n_values > MAX_SCHEMA_VALUES:
                raise self.fail(self.param, f"the schema holds more than {MAX_SCHEMA_VALUES} JSON values")
            if isinstance(value, Mapping):
                ref = value.get("$ref")
                if isinstance(ref, str) and not ref.startswith("#/"):
                    raise self.fail(f"{path}.$ref", f"$ref {ref[:100]!r} does not point inside the schema "
                                    "(#/...): remote and relative references are not supported")
            pairs, field = (value.items(), ".{}") if isinstance(value, Mapping) else (enumerate(value), "[{}]")
            todo.extend((item, path + field.format(key)) for key, item in pairs if isinstance(item, (Mapping, list)))

    def grow(self, size: int, rules: int, path: str) -> None:
        """Count grammar text and rules the converter will write."""
        self.size += size
        self.rules += rules
        if self.size > MAX_SCHEMA_GRAMMAR:
            raise self.fail(path, f"the schema's grammar would exceed {MAX_SCHEMA_GRAMMAR} characters "
                            "(repetitions written out, names included)")
        if self.rules > MAX_SCHEMA_RULES:
            raise self.fail(path, f"the schema's grammar would exceed {MAX_SCHEMA_RULES} rules (each "
                            "optional repetition of an item or a character takes two)")

    def add_strings(self, n: int, path: str) -> None:
        self.strings += n
        if self.strings > MAX_SCHEMA_STRINGS:
            raise self.fail(path, f"the schema's property names, enum and const values and patterns exceed "
                            f"{MAX_SCHEMA_STRINGS} characters in total (JSON-encoded)")

    def run(self) -> None:
        # (node, path, rule name, depth, where its branches go), or a _Branches to total once its
        # children are done; the converter names the top rule "output" or "tool<i>-arguments"
        todo: list[Any] = [(self.root, self.param, "tool00-arguments", 1, None)]
        while todo:
            entry = todo.pop()
            if isinstance(entry, _Branches):
                self.finish(entry)
            else:
                node, path, name, depth, sink = entry
                children: list[Any] = []  # (walked in the document's order; a _Branches first)
                self.visit(node, path, name, depth, sink, children)
                if children and isinstance(children[0], _Branches):
                    todo.append(children.pop(0))
                todo.extend(reversed(children))

    def finish(self, branches: _Branches) -> None:
        fan = 1 + sum(branches.fans)
        if fan > MAX_SCHEMA_BRANCHES:
            raise self.fail(branches.path, f"the value can begin in more than {MAX_SCHEMA_BRANCHES} ways "
                            "(enum values, anyOf/oneOf alternatives and types, through $refs)")
        if branches.ref is not None:
            self.resolving.discard(branches.ref)
        if branches.memo is not None:
            self.converted[branches.memo] = fan - 1
        if branches.sink is not None:
            branches.sink.append(fan)

    def visit(self, node: Any, path: str, name: str, depth: int, sink: list[int] | None, todo: list[Any]) -> None:
        """A subschema, through the branches of SchemaConverter.visit in their order."""
        if not isinstance(node, Mapping):
            return  # the converter refuses it
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise self.fail(path, f"the schema has more than {MAX_SCHEMA_NODES} subschemas (a $ref counted "
                            "at each use)")
        if depth > MAX_SCHEMA_DEPTH:
            raise self.fail(path, f"the schema nests subschemas more than {MAX_SCHEMA_DEPTH} deep (through $refs)")
        self.grow(16 + (2 * len(name) if _named(node) else 0), 4, path)  # a reference, a definition
        fan = 4  # a value begins with a quote, a bracket, a brace or a keyword
        kind = node.get("type")
        if node.get("$ref") is not None:
            self.reference(node["$ref"], path, depth, sink, todo)
            return
        if "oneOf" in node or "anyOf" in node:
            key = "oneOf" if node.get("oneOf") else "anyOf"
            if not isinstance(node.get(key), list):
                return
            branches = _Branches(path, sink)
            todo.append(branches)
            for i, alternative in enumerate(node[key]):
                self.grow(3, 0, path)
                todo.append((alternative, f"{path}.{key}[{i}]", f"{name}-{i}", depth + 1, branches.fans))
            return
        if isinstance(kind, list):
            self.nodes += len(kind)
            self.grow(16 * len(kind), len(kind), path)
            fan = 1 + 16 * len(kind)
        elif "const" in node:
            self.literal(node["const"], f"{path}.const")
        elif "enum" in node:
            if not isinstance(node["enum"], (list, str, Mapping)):
                return
            for value in node["enum"]:
                self.literal(value, f"{path}.enum")
            fan = 1 + len(node["enum"])
        elif kind in (None, "object") and ("properties" in node or (
                "additionalProperties" in node and node["additionalProperties"] is not True)):
            self.object(node, path, name, depth, todo)
        elif kind in (None, "object") and "allOf" in node:
            self.all_of(node["allOf"], path, name, depth, todo)
        elif kind in (None, "array") and ("items" in node or "prefixItems" in node):
            key = "items" if node.get("items") else "prefixItems"
            items = node.get(key)
            if isinstance(items, list):
                for i, item in enumerate(items):
                    self.grow(12, 0, path)
                    todo.append((item, f"{path}.{key}[{i}]", f"{name}-tuple-{i}", depth + 1, None))
            else:
                todo.append((items, f"{path}.{key}", f"{name}-item", depth + 1, None))
                # `item "," space` per item, the item's rule named after the array's unless a primitive
                self.repetition(node, path, ("minItems", "maxItems"), (len(name) + 5 if _named(items) else 13) + 12)
        elif kind in (None, "string") and "pattern" in node:
            self.pattern(node["pattern"], f"{path}.pattern", name)
        elif kind in (None, "string") and not isinstance(node.get("format") or "", str):
            return  # the converter refuses it
        elif kind in (None, "string") and _FORMAT.fullmatch(node.get("format") or ""):
            pass  # a fixed rule; other formats go on to the branches below, as in the converter
        elif kind == "string" and ("minLength" in node or "maxLength" in node):
            self.repetition(node, path, ("minLength", "maxLength"), 5)  # `char`
        elif kind in ("number", "integer"):
            fan = 16
        if sink is not None:
            sink.append(fan)

    def reference(self, ref: Any, path: str, depth: int, sink: list[int] | None, todo: list[Any]) -> None:
        """A $ref: its target converted, once if the converter finds the rule again by its name."""
        if not isinstance(ref, str):
            return
        rule_name = ref.split("/")[-1]
        memo = rule_name if _INVALID_RULE_CHARS.search(rule_name) is None and rule_name not in _RESERVED else None
        if ref in self.resolving or (memo is not None and memo in self.converted):
            if sink is not None:
                sink.append(1 + self.converted.get(memo or "", 1))
            return
        target: Any = self.root
        target_path = self.param
        for key in ref.split("#")[-1].split("/")[1:]:  # as the converter's resolve_refs reads it
            if not isinstance(target, Mapping) or key not in target:
                return  # the converter refuses it
            target, target_path = target[key], f"{target_path}.{key}"
        self.resolving.add(ref)
        branches = _Branches(path, sink, ref, memo)
        todo.append(branches)
        todo.append((target, target_path, rule_name, depth + 1, branches.fans))

    def object(self, node: Mapping[str, Any], path: str, name: str, depth: int, todo: list[Any]) -> None:
        properties, extra = node.get("properties", {}), node.get("additionalProperties")
        if not isinstance(properties, Mapping):
            return
        try:
            required = set(node.get("required", []))
        except TypeError:
            return
        has_extra = isinstance(extra, Mapping) or ((_number(extra) or isinstance(extra, bool)) and extra == 1)
        self.optional(sum(prop not in required for prop in properties) + has_extra, f"{path}.properties")
        for prop, schema in properties.items():
            self.property(prop, schema, path, name, depth, todo, prop not in required)
        if has_extra:
            todo.append((extra if isinstance(extra, Mapping) else {}, f"{path}.additionalProperties",
                         f"{name}-additional-value", depth + 1, None))

    def all_of(self, components: Any, path: str, name: str, depth: int, todo: list[Any]) -> None:
        """The converter merges the properties of allOf's components (those of an anyOf in it as
        optional), each time it meets them: through a $ref too, converting its target again."""
        if not isinstance(components, list):
            return
        n_optional = 0
        for i, component in enumerate(components):
            if not isinstance(component, Mapping):
                return
            parts = component.get("anyOf", [component])
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, Mapping) and isinstance(part.get("$ref"), str):
                    ref, part = part["$ref"], self.root
                    for key in ref.split("#")[-1].split("/")[1:]:
                        part = part.get(key) if isinstance(part, Mapping) else None
                properties = part.get("properties", {}) if isinstance(part, Mapping) else None
                if not isinstance(properties, Mapping):
                    return  # the converter refuses it
                n_optional += len(properties) if "anyOf" in component else 0
                for prop, schema in properties.items():
                    self.property(prop, schema, f"{path}.allOf[{i}]", name, depth, todo, "anyOf" in component)
        self.optional(n_optional, f"{path}.allOf")

    def optional(self, n: int, path: str) -> None:
        if n > MAX_OPTIONAL_PROPERTIES:
            raise self.fail(path, f"the object has {n} optional properties; at most {MAX_OPTIONAL_PROPERTIES} "
                            "(the converter's work grows with their square)")

    def property(self, prop: Any, schema: Any, path: str, name: str, depth: int, todo: list[Any],
                 optional: bool) -> None:
        if not isinstance(prop, str):
            return
        encoded = json.dumps(prop)
        self.add_strings(len(encoded), path)
        # its key-value rule `name-kv ::= "\"key\"" space ":" space name` and the object's reference;
        # an optional one also in a rule of what may follow it, and in an alternative
        length = len(name) + 1 + len(prop)
        self.grow(3 * length + len(encoded) + encoded.count('"') + 48 + (3 * length + 48 if optional else 0),
                  3 if optional else 1, path)
        child = f"{name}-{prop}"
        names = self.rule_names.setdefault(_INVALID_RULE_CHARS.sub("-", child), set())
        names.add(child)
        if len(names) > MAX_SAME_RULE_NAME:
            raise self.fail(f"{path}.properties", f"more than {MAX_SAME_RULE_NAME} property names escape to the "
                            f"rule name {_INVALID_RULE_CHARS.sub('-', child)[-60:]!r} (the converter renames "
                            "them in quadratic time)")
        todo.append((schema, f"{path}.properties.{prop}", child, depth + 1, None))

    def literal(self, value: Any, path: str) -> None:
        """An enum or const value: a literal in the grammar (JSON-encoded, its quotes escaped)."""
        self.literals += 1
        if self.literals > MAX_ENUM_VALUES:
            raise self.fail(path, f"the schema has more than {MAX_ENUM_VALUES} enum and const values in total")
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            return  # the converter refuses it
        self.add_strings(len(encoded), path)
        self.grow(len(encoded) + encoded.count('"') + 5, 0, path)

    def repetition(self, node: Mapping[str, Any], path: str, keys: tuple[str, str], item_length: int) -> None:
        """minItems/maxItems or minLength/maxLength: the converter writes the minimum of items, then
        the optional ones, each nested in the previous one's group."""
        low, high = node.get(keys[0], 0), node.get(keys[1])
        for key, value in zip(keys, (low, high)):
            if _number(value) and value > MAX_REPETITION:
                raise self.fail(f"{path}.{key}", f"{key} is {value}; at most {MAX_REPETITION} (llama.cpp's "
                                "repetition threshold: the grammar writes each item out)")
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            return  # the converter refuses it
        span = 0 if high is None else high - low
        if span > MAX_OPTIONAL_REPETITION:
            raise self.fail(f"{path}.{keys[1]}", f"{keys[1]} - {keys[0]} is {span}; at most "
                            f"{MAX_OPTIONAL_REPETITION} (the converter nests a group per optional item, and "
                            "llama.cpp refuses deeper)")
        self.grow(max(low, 0) * (item_length + 1) + max(span, 0) * (item_length + 4), 2 * max(span, 0) + 2,
                  f"{path}.{keys[1] if high is not None else keys[0]}")

    def pattern(self, pattern: Any, path: str, name: str) -> None:
        """A regular expression, read as the converter's _visit_pattern translates it."""
        if not isinstance(pattern, str):
            return
        self.add_strings(len(pattern), path)
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise self.fail(path, f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH}")
        if not (pattern.startswith("^") and pattern.endswith("$")):
            return  # the converter refuses it
        body, sub_rule = pattern[1:-1], len(name) + 3  # a group repeated by {} is a rule `name-<n>`
        size, rules = 3 * len(pattern) + 2 * len(name) + 40, 2
        groups = [[False, True]]  # per open group: an alternative may match nothing, this one may so far
        last: tuple[bool, int] | None = None  # the last item: may it match nothing, its length in GBNF
        i = 0
        while i < len(body):
            char = body[i]
            if char in "*+?{":
                if last is None:
                    return  # the converter refuses it
                empty, length = last
                if char == "{":
                    end = body.find("}", i)
                    low, high = _quantifier(body[i + 1:end]) if end > 0 else (None, None)
                    if low is None:
                        return  # the converter refuses it
                    shown, i = body[i:end + 1][:40], end + 1
                    if low > MAX_REPETITION or (high is not None and high > MAX_REPETITION):
                        raise self.fail(path, f"the pattern's repetition {shown} exceeds {MAX_REPETITION} "
                                        "(llama.cpp's repetition threshold)")
                    span = 0 if high is None else high - low
                    if span > MAX_OPTIONAL_REPETITION:
                        raise self.fail(path, f"the pattern's repetition {shown} has {span} optional items; "
                                        f"at most {MAX_OPTIONAL_REPETITION}")
                    optional = 1 if high is None else max(span, 0)
                    size += max(low, 0) * (length + 1) + optional * (length + 6)
                    rules += 2 * max(span, 0) + 2
                    repeats = max(low, 0) + optional >= 2
                    last = (empty or low <= 0, sub_rule)
                else:
                    i, rules, repeats = i + 1, rules + 1, char == "+"
                    last = (empty or char != "+", sub_rule)
                if empty and repeats:  # each copy multiplies the ways to begin: `((a?){2}){2}...`
                    raise self.fail(path, f"the pattern repeats something that can match the empty string "
                                    f"(before index {i + 1}); make it match at least one character")
                continue
            if last is not None:
                groups[-1][1] = groups[-1][1] and last[0]
            last = None
            if char == "(":
                i += 1
                if i < len(body) and body[i] == "?":
                    return  # the converter refuses it
                groups.append([False, True])
                rules += 1
                if len(groups) - 1 > MAX_PATTERN_DEPTH:
                    raise self.fail(path, f"the pattern nests groups more than {MAX_PATTERN_DEPTH} deep")
            elif char == ")":
                i += 1
                if len(groups) == 1:
                    return  # the converter refuses it
                any_empty, all_empty = groups.pop()
                last = (any_empty or all_empty, sub_rule)
            elif char == "|":
                groups[-1] = [groups[-1][0] or groups[-1][1], True]
                i += 1
            elif char in "]}":
                raise self.fail(path, f"the pattern has an unmatched {char!r} at index {i + 1}, on which the "
                                "converter would loop forever")
            elif char in "[.":
                end = i
                while char == "[" and end < len(body) and body[end] != "]":
                    end += 2 if body[end] == "\\" else 1
                if end >= len(body):
                    return  # the converter refuses it
                last, i = (False, sub_rule), end + 1
            else:  # a run of literal characters, cut where the converter cuts it
                length = 0
                while i < len(body):
                    if body[i] == "\\" and i < len(body) - 1:
                        length, i = length + 2, i + 2
                    elif body[i] == '"':
                        length, i = length + 2, i + 1
                    elif body[i] not in _NON_LITERAL and (i == len(body) - 1 or length == 0 or body[i + 1] == "."
                                                          or body[i + 1] not in _NON_LITERAL):
                        length, i = length + 1, i + 1
                    else:
                        break
                last = (False, length + 2)
        self.grow(size, rules, path)


def _quantifier(text: str) -> tuple[int | None, int | None]:
    """`m`, `m,`, `,n` or `m,n` as the converter reads `{...}`; (None, None) where it refuses it."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]) if parts[0] else 0, int(parts[1]) if parts[1] else None
    except ValueError:
        pass
    return None, None
