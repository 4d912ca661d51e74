"""Limits that keep a GBNF grammar from crashing or stalling llama.cpp.

llama.cpp does grammar work in C, where a stack overflow or a runaway loop takes
the whole process down (measured with the llama.cpp of llama-cpp-python 0.3.36):

- it parses GBNF by recursive descent, one C++ frame pair (~420 bytes) per
  nested group: 20,000 `(` overflow the 8 MiB main stack.
- `llama_sampler_init_grammar` runs `llama_grammar_detect_left_recursion`
  (recursive, no memo) and `llama_grammar_advance_stack` over every way a rule
  can begin: 16 rules `r ::= s | s "x"` take 8 s, 20 over a minute; a chain of
  70,000 `r ::= s` overflows the stack; `"a"{5,3}` never returns; `root`
  mentioned only in a rule later redefined is read out of bounds.

`check_gbnf` refuses such a grammar before llama.cpp sees it, in time linear in
its size, with a `GrammarLimitError` naming the limit. What llama.cpp refuses
cleanly on its own (a malformed grammar) is left to it.
"""

from __future__ import annotations

import re

from igllama.engine.errors import InputError

# llama.cpp's MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp): it refuses `{m}` above it, reads a
# larger `{m,n}` maximum as unbounded, and refuses a repetition of a group or repetition whose
# rules multiply beyond it. A schema's counts (minItems, maxLength, ...) are held to it too.
MAX_REPETITION = 2000

# --- GBNF ---
# Characters. This check spends ~1-2 µs of Python per symbol: ~0.5 s for the worst 256 KiB; the
# grammars of the largest schemas accepted below are 100-240 KiB.
MAX_GRAMMAR_LENGTH = 256 * 1024
# Groups inside groups. 8 MiB of stack (Linux's main thread and glibc's default for threads)
# overflow at ~19,000 levels, 512 KiB at ~1,150. The converter nests a group per optional item
# (up to MAX_OPTIONAL_REPETITION) inside a pattern's own groups (up to MAX_PATTERN_DEPTH).
MAX_NESTING_DEPTH = 1100
# Rules, with those llama.cpp generates for groups and repetitions: 100,000 compile in 0.16 s and
# 12 MiB, 1,000,000 in 1.3 s and 210 MiB.
MAX_RULES = 250_000
MAX_ELEMENTS = 2_000_000  # symbols once repetitions are written out (8 bytes, copied ~3 times)
# Ways one position can begin, following rules that can match nothing: each is a call of
# detect_left_recursion and a stack of advance_stack, and the stacks are compared pairwise
# (4,000 alternatives compile in 0.09 s, 16,000 in 0.7 s; a chain of 4,000 rules 0.34 s, 100 MiB).
MAX_EXPANSION = 4096



class GrammarLimitError(InputError):
    """A grammar or schema beyond a limit; `param` names the field (for a schema, the path in it)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_gbnf(text: str, param: str = "grammar") -> None:
    """Refuse (`GrammarLimitError`) a GBNF grammar llama.cpp could crash or stall on.

    Reads it as llama.cpp's parser does, without recursion, checking its length,
    nesting and repetitions, the rules and symbols it expands to, left recursion
    and the ways each position can begin. A grammar malformed before a limit is
    reached is left to llama.cpp, which stops at its first error.
    """
    if len(text) > MAX_GRAMMAR_LENGTH:
        raise GrammarLimitError(f"the grammar is {len(text)} characters long; at most {MAX_GRAMMAR_LENGTH} "
                                "(a grammar built from a schema or from tools counts too)", param)
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise GrammarLimitError(f"the grammar is not valid Unicode ({exc.reason} at {exc.start})", param) from None
    grammar = _Gbnf(text.split("\0", 1)[0], param)  # llama.cpp reads a C string
    try:
        grammar.parse()
    except _Malformed:
        return
    if grammar.accepted():
        grammar.check_expansion()


class _Malformed(Exception):
    """Where llama.cpp's parser throws: it refuses the grammar there, before going deeper."""


# Tokens as llama.cpp's parse_space, parse_name, parse_char (escapes \xHH \uHHHH \UHHHHHHHH \t \r \n
# \\ \" \[ \] \-), parse_sequence and parse_token read them, each with the space after it
# (newlines are space only inside a group).
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_INT = re.compile(r"[0-9]+")
_ESC = r'\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[tnr\\"\[\]-])'
_SYMBOL = (rf'"(?P<literal>(?:[^"\\]|{_ESC})*)"|\[\^?(?P<chars>(?:[^\]\\]|{_ESC})*)\]'
           r"|!?<(?:\[[0-9]+\]|(?!\[)[^>]*)>|(?P<name>[a-zA-Z0-9-]+)|\.")
_NEXT = {nested: re.compile(rf"(?:(?:{_SYMBOL})|(?P<other>[()|*+?{{]?))(?:{space.pattern})")
         for nested, space in ((False, _SPACE), (True, _SPACE_NL))}
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _skip(space: re.Pattern[str], text: str, pos: int) -> int:
    """Where the space (or nothing) at `pos` ends."""
    match = space.match(text, pos)
    return match.end() if match else pos


class _Frame:
    """A rule or group being read, as llama.cpp's parse_alternates holds it."""

    __slots__ = ("alts", "before", "last", "n_prev", "nested", "rule", "seq")

    def __init__(self, rule: int, nested: bool, before: int) -> None:
        self.rule, self.nested, self.before = rule, nested, before  # before: llama.cpp's rule count
        self.alts: list[list[int]] = []
        self.seq: list[int] = []
        self.last = 0  # where the last symbol starts in seq (llama.cpp's last_sym_start)
        self.n_prev = 1  # the rules that symbol stands for (llama.cpp's n_prev_rules)


class _Gbnf:
    """The rules llama.cpp compiles: alternatives of items, an item a rule (>= 0) or -n terminals.

    What a repetition writes out (copies of an item, a chain of rules) is one rule here standing
    for `times` of them, so that the check stays linear in the text; llama.cpp's counts are kept.
    """

    def __init__(self, text: str, param: str) -> None:
        self.text, self.param = text, param
        self.ids: dict[str, int] = {}
        self.labels: list[str] = []
        self.rules: list[list[list[int]] | None] = []
        self.times: dict[int, int] = {}
        self.copies: set[int] = set()  # rules of ours standing for copies in a row
        self.shared: dict[str, int] = {}  # one rule of ours for all `?` (or `*`) of a terminal
        self.llama_ids: dict[int, int] = {}  # named rule -> its id in llama.cpp
        self.n_rules = self.size = self.n_elements = 0  # llama.cpp's symbol_ids.size(), rules.size()
        self.closed_group: int | None = None

    def fail(self, message: str) -> GrammarLimitError:
        return GrammarLimitError(message, self.param)

    def new_rule(self, label: str, counted: bool = True) -> int:
        if counted:
            self.count_rules(1)
        self.rules.append(None)
        self.labels.append(label)
        return len(self.rules) - 1

    def symbol(self, name: str) -> int:
        """A named rule, new at its first mention (llama.cpp's get_symbol_id)."""
        rule = self.ids.get(name)
        if rule is None:
            self.llama_ids[len(self.rules)] = self.n_rules
            rule = self.ids[name] = self.new_rule(name)
        return rule

    def count_rules(self, n: int) -> None:
        self.n_rules += n
        if self.n_rules > MAX_RULES:
            raise self.fail(f"the grammar expands to more than {MAX_RULES} rules (counting those llama.cpp "
                            "generates for groups and repetitions)")

    def add_elements(self, n: int) -> None:
        self.n_elements += n
        if self.n_elements > MAX_ELEMENTS:
            raise self.fail(f"the grammar expands to more than {MAX_ELEMENTS} symbols once its repetitions "
                            "are written out")

    def parse(self) -> None:
        """llama_grammar_parser::parse: rules `name ::= alternates`, one a line."""
        text = self.text
        pos = _skip(_SPACE_NL, text, 0)
        while pos < len(text):
            name = _NAME.match(text, pos)
            if name is None:
                raise _Malformed
            rule = self.symbol(name.group())
            pos = _skip(_SPACE, text, name.end())
            if not text.startswith("::=", pos):
                raise _Malformed
            pos = self.body(_skip(_SPACE_NL, text, pos + 3), rule)
            self.size = max(self.size, self.llama_ids[rule] + 1)
            if text.startswith("\r\n", pos):
                pos += 2
            elif text.startswith(("\r", "\n"), pos):
                pos += 1
            elif pos < len(text):
                raise _Malformed  # "expecting newline or end"
            pos = _skip(_SPACE_NL, text, pos)

    def body(self, pos: int, rule: int) -> int:
        """A rule's alternates; llama.cpp's parse_alternates and parse_sequence recurse into each
        group, this keeps a stack of frames. Returns where the rule ends."""
        text, label = self.text, self.labels[rule]
        frames = [_Frame(rule, nested=False, before=0)]
        frame, scan = frames[0], _NEXT[False]
        while True:
            match = scan.match(text, pos)
            if match is None:  # (the scan matches at least nothing)
                raise _Malformed
            other = match.group("other")
            if other is None:  # a symbol, and the space after it
                first = text[pos]
                if first == '"' or first == "[":  # an escape counted as its length: an upper bound
                    n = len(match.group("literal" if first == '"' else "chars"))
                    item = -n if n else None  # "" pushes nothing: repeating it is an error
                    self.n_elements += n
                else:
                    item = self.symbol(match.group("name")) if first in _NAME_START else -1
                    self.n_elements += 1
                frame.last = len(frame.seq)
                if item is not None:
                    frame.seq.append(item)
                frame.n_prev = 1
                pos = match.end()
            elif other == "(":
                frame = _Frame(len(self.rules), nested=True, before=self.n_rules)
                self.new_rule(label)
                frames.append(frame)
                if len(frames) - 1 > MAX_NESTING_DEPTH:
                    raise self.fail(f"the grammar nests groups more than {MAX_NESTING_DEPTH} deep (at "
                                    f"character {pos}); llama.cpp parses each level by recursion")
                pos = _skip(_SPACE_NL, text, match.end())
                scan = _NEXT[True]
            elif other in ("*", "+", "?"):
                pos = match.end()
                self.repeat(frame, int(other == "+"), 1 if other == "?" else None, label)
            elif other == "{":
                pos, low, high = self.braces(match.end(), _SPACE_NL if frame.nested else _SPACE)
                self.repeat(frame, low, high, label)
            elif other == "|":
                frame.alts.append(frame.seq)
                frame.seq, frame.last, frame.n_prev = [], 0, 1
                pos = _skip(_SPACE_NL, text, match.end())
            else:  # the end of this group or rule
                if text.startswith(('"', "[", "<", "!"), pos):
                    raise _Malformed  # an unterminated literal, class or token, or a bad escape
                frame.alts.append(frame.seq)
                self.rules[frame.rule] = frame.alts
                self.n_elements += len(frame.alts) + 1  # ALT / END, and the reference to a group
                if not frame.nested:
                    self.add_elements(0)
                    return pos
                frames.pop()
                if other != ")":
                    raise _Malformed
                group, frame = frame, frames[-1]
                frame.last = len(frame.seq)
                frame.seq.append(group.rule)
                frame.n_prev = max(1, self.n_rules - group.before)
                self.size = max(self.size, group.before + 1)
                self.closed_group, scan = group.rule, _NEXT[frame.nested]
                pos = _skip(_SPACE_NL if frame.nested else _SPACE, text, pos + 1)

    def braces(self, pos: int, space: re.Pattern[str]) -> tuple[int, int, int | None]:
        """`{m}`, `{m,}` or `{m,n}` after its `{`: where it ends, m, n (None: no maximum)."""
        text = self.text
        pos, low = self.integer(_skip(space, text, pos))
        pos = _skip(space, text, pos)
        high: int | None = low
        if not text.startswith("}", pos):
            if not text.startswith(",", pos):
                raise _Malformed
            pos = _skip(space, text, pos + 1)
            high = None
            if _INT.match(text, pos):
                pos, high = self.integer(pos)
                pos = _skip(space, text, pos)
            if not text.startswith("}", pos):
                raise _Malformed
        return _skip(space, text, pos + 1), low, high

    def integer(self, pos: int) -> tuple[int, int]:
        """The digits at `pos` as std::stoull reads them (it throws above 2^64 - 1)."""
        match = _INT.match(self.text, pos)
        digits = match.group().lstrip("0") if match else ""
        if match is None or len(digits) > 20 or int(digits or "0") >= 1 << 64:
            raise _Malformed
        return match.end(), int(digits or "0")

    def repeat(self, frame: _Frame, low: int, high: int | None, label: str) -> None:
        """llama.cpp's handle_repetitions: `item{low,high}` is `low` copies of the item, then a chain
        of `high - low` rules `rest_i ::= item rest_(i-1) |` (one `rest ::= item rest |` unbounded)."""
        if frame.last == len(frame.seq):
            raise _Malformed  # nothing to repeat
        if low > MAX_REPETITION or (high is not None and high < low):
            shown = f"repetition {{{low},{'' if high is None else high}}} in rule `{label}`"
            if low > MAX_REPETITION:
                raise self.fail(f"{shown} exceeds {MAX_REPETITION}, llama.cpp's repetition threshold")
            # (llama.cpp counts high - low rules in unsigned arithmetic: it would loop without end)
            raise self.fail(f"{shown} has its maximum below its minimum")
        if high is not None and high > MAX_REPETITION:
            high = None  # as llama.cpp reads it
        total = high if high else max(low, 1)
        if frame.n_prev * total > MAX_REPETITION:
            raise self.fail(f"repetition {{{low},{'' if high is None else high}}} in rule `{label}` repeats a "
                            f"repetition: {frame.n_prev} x {total} rules exceed llama.cpp's threshold {MAX_REPETITION}")
        item = frame.seq[frame.last:]
        weight = (-item[0] if item[0] < 0 else 1) if len(item) == 1 else sum(-x if x < 0 else 1 for x in item)
        n_optional = 1 if high is None else high - low
        self.count_rules(n_optional)
        self.size = max(self.size, self.n_rules)
        self.add_elements(weight * (max(low, 1) - 1) + n_optional * (weight + 3))
        if low > 1:
            copies = self.new_rule(label, counted=False)
            self.rules[copies], self.times[copies] = [item], low
            self.copies.add(copies)
            frame.seq[frame.last:] = [copies]
        elif low == 0:
            del frame.seq[frame.last:]
        if low == 0 and high == 1 and item == [self.closed_group]:
            # `( ... )?`: let the group match nothing, where llama.cpp adds `rest ::= group |`
            # (which begins the same ways): the converter writes thousands of these
            self.rules[item[0]].append([])  # type: ignore[union-attr]
            frame.seq.append(item[0])
        elif n_optional == 1 and len(item) == 1 and item[0] < 0:  # `"a"?`, `[a-z]*`: all alike here
            key = "*" if high is None else "?"
            if key not in self.shared:
                self.shared[key] = rest = self.new_rule(label, counted=False)
                self.rules[rest] = [[-1, rest] if high is None else [-1], []]
            frame.seq.append(self.shared[key])
        elif n_optional:
            rest = self.new_rule(label, counted=False)
            self.rules[rest] = [[*item, rest] if n_optional > 1 or high is None else item, []]
            self.times[rest] = n_optional
            frame.seq.append(rest)
        frame.n_prev *= total

    def accepted(self) -> bool:
        """Whether llama.cpp's parser accepts the rules: all defined below the highest one defined
        (its rules.size()), all references to defined rules, and a `root`."""
        if any(self.rules[rule] is None and llama_id < self.size for rule, llama_id in self.llama_ids.items()):
            return False
        if any(item >= 0 and self.rules[item] is None for alts in self.rules for alt in alts or () for item in alt):
            return False
        root = self.ids.get("root")
        if root is not None and self.rules[root] is None:  # llama.cpp would read past its rules
            raise self.fail("the grammar mentions rule `root` but does not define it")
        return root is not None

    def check_expansion(self) -> None:
        """Refuse left recursion that makes llama.cpp's stacks grow without end, and positions that
        can begin in more than MAX_EXPANSION ways (through rules that may match nothing)."""
        rules = [alts or [] for alts in self.rules]  # (an undefined rule is referenced nowhere)
        nullable = _nullable(rules)
        # The rules each rule can begin with, and whether the reference ends its alternative: then
        # advance_stack pushes nothing after it, and a cycle of such references stays in place.
        edges: list[list[tuple[int, bool]]] = [[] for _ in rules]
        for rule, alts in enumerate(rules):
            for alt in alts:
                for i, item in enumerate(alt):
                    if item < 0:
                        break
                    edges[rule].append((item, i == len(alt) - 1 and rule not in self.copies))
                    if not nullable[item]:
                        break
        component, order = _components(edges)
        cost = [0] * len(rules)
        for rule in order:  # what a rule begins with first
            if any(component[target] == component[rule] and not tail for target, tail in edges[rule]):
                raise self.fail(f"rule `{self.labels[rule]}` is left-recursive: it can begin with itself "
                                "(perhaps after rules that match nothing)")
            total = 1
            for alt in rules[rule]:
                for item in alt:
                    total += 1 if item < 0 or component[item] == component[rule] else cost[item]
                    if item < 0 or not nullable[item]:
                        break
            if self.times.get(rule, 1) > 1 and all(x >= 0 and nullable[x] for x in rules[rule][0] if x != rule):
                total *= self.times[rule]  # each copy, or rule of the chain, begins the same ways again
            if total > MAX_EXPANSION:
                raise self.expansion(rule)
            cost[rule] = total
        for rule, alts in enumerate(rules):
            for alt in alts:
                run = cost[rule] if rule in self.copies else 0  # (then the next copy follows)
                for item in reversed(alt):  # the ways to begin at each position, from the last
                    run = 1 if item < 0 else cost[item] + (run if nullable[item] else 0)
                    if run > MAX_EXPANSION:
                        raise self.expansion(rule)

    def expansion(self, rule: int) -> GrammarLimitError:
        return self.fail(f"rule `{self.labels[rule]}` can begin in more than {MAX_EXPANSION} ways "
                         "(alternatives, through the rules it begins with); llama.cpp walks each one")


def _nullable(rules: list[list[list[int]]]) -> list[bool]:
    """Which rules can match the empty string (a worklist: linear)."""
    nullable = [False] * len(rules)
    missing: list[int] = []  # per alternative without terminals: its references not known nullable
    owner: list[int] = []
    users: list[list[int]] = [[] for _ in rules]
    ready = []
    for rule, alts in enumerate(rules):
        for alt in alts:
            if alt and min(alt) < 0:
                continue
            for item in alt:
                users[item].append(len(missing))
            missing.append(len(alt))
            owner.append(rule)
            if not alt and not nullable[rule]:
                nullable[rule] = True
                ready.append(rule)
    while ready:
        for index in users[ready.pop()]:
            missing[index] -= 1
            if missing[index] == 0 and not nullable[owner[index]]:
                nullable[owner[index]] = True
                ready.append(owner[index])
    return nullable


def _components(edges: list[list[tuple[int, bool]]]) -> tuple[list[int], list[int]]:
    """Tarjan's strongly connected components, without recursion: each node's component, and the
    nodes in an order where a node comes after those it reaches outside its component."""
    n = len(edges)
    component = list(range(n))
    order = [node for node in range(n) if not edges[node]]
    index, low, on_stack = [-1] * n, [0] * n, [False] * n
    stack: list[int] = []
    counter = 0
    for start in range(n):
        if index[start] >= 0 or not edges[start]:
            continue
        work = [(start, 0)]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack[start] = True
        while work:
            node, i = work[-1]
            if i < len(edges[node]):
                work[-1] = (node, i + 1)
                target = edges[node][i][0]
                if index[target] < 0 and edges[target]:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack[target] = True
                    work.append((target, 0))
                elif on_stack[target]:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    component[member] = node
                    order.append(member)
                    if member == node:
                        break
    return component, order
