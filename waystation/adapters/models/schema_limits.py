"""What a JSON Schema may ask of llama.cpp's grammar: bounds checked before a grammar is built.

llama-cpp-python's converter writes `maxLength: N` (and `maxItems`, and a pattern's `{m,n}`) as N
nested optional groups, `(c (c (c ...)?)?)?`. Measured with the packaged SmolLM2 on llama.cpp
0.3.36 (issue 20, item 8): up to N = 1,000 the grammar is enforced; from 1,001 llama.cpp's
parser refuses it ("number of rules that are going to be repeated ... exceeds sane defaults",
its MAX_REPETITION_THRESHOLD of 2,000, two rules a level) and samples with no grammar at all, so
the answer silently ignores the schema; from about 18,500 the parser's recursion overflows an
8 MiB thread stack and the process dies (SIGSEGV). `minLength`/`minItems` are written out flat
(enforced at 50,000) but ask the model for more than any reply holds, so they share the bound.

The counts (properties, enum values, nesting, characters of names) are OpenAI's Structured
Outputs limits, so a schema OpenAI takes is taken here; nesting counts every subschema level
(OpenAI counts objects), as the converter and these checks recurse through each. A refusal is a
400 naming the keyword, where it is (`$.properties.x`) and the limit.

A tool's schema that does not come from the request (an MCP server's, a built-in) is not the
caller's to fix: its grammar leaves out a keyword past a bound (`past_bound`), as a looser
grammar, and the tool still checks the arguments it gets. `check_grammar` is the backstop behind
the keyword bounds: the grammar as built, whatever wrote
it, may nest its groups no deeper than llama.cpp parses safely.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from waystation.errors import UnsupportedParameter

REPETITION_LIMIT = 1_000  # maxLength, minLength, maxItems, minItems, a pattern's {m,n}
REPETITION_KEYWORDS = ("maxLength", "minLength", "maxItems", "minItems")
NESTING_LIMIT = 32  # subschema levels; the converter recurses per level
PROPERTIES_LIMIT = 5_000  # OpenAI: object properties in all
ENUM_LIMIT = 1_000  # OpenAI: enum values in all
NAME_CHARS_LIMIT = 120_000  # OpenAI: characters of property names, enum and const values
# Bounded repetitions inside bounded repetitions, e.g. (a{0,30}){0,30}: llama.cpp follows every
# way of reading the text so far, so each token costs about their product (900 there: 79 s for 30
# tokens, against 0.5 s for a{0,9}; (a{0,900}){0,900} did not finish 4 tokens in 100 s).
NESTED_REPETITION_LIMIT = 100
GRAMMAR_NESTING_LIMIT = 2 * REPETITION_LIMIT  # groups in groups; llama.cpp crashed at ~18,500

# Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
# A regex quantifier {m}, {m,} or {m,n} (read where it starts, so never an escaped brace).
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


@dataclass
class _Totals:
    properties: int = 0
    enum_values: int = 0
    name_chars: int = 0


def check_schema(schema: Any, where: str) -> None:
    """UnsupportedParameter(where, ...) naming the first bound `schema` goes past, else None."""
    totals = _Totals()
    for path, depth, node in _subschemas(schema, "$", 1):
        if depth > NESTING_LIMIT:
            _refuse(where, f"{depth} levels of nesting at {path} exceed {NESTING_LIMIT}")
        for keyword in REPETITION_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, int | float) and value > REPETITION_LIMIT:
                _refuse(where, f"{keyword} {value} at {path} exceeds {REPETITION_LIMIT}", keyword)
        if isinstance(pattern := node.get("pattern"), str):
            _check_pattern(pattern, path, where)
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            totals.properties += len(properties)
            totals.name_chars += sum(len(str(name)) for name in properties)
        enum = node.get("enum")
        if isinstance(enum, list):
            totals.enum_values += len(enum)
            totals.name_chars += sum(len(str(v)) for v in enum)
        if "const" in node:
            totals.name_chars += len(str(node["const"]))
        if totals.properties > PROPERTIES_LIMIT:
            _refuse(where, f"more than {PROPERTIES_LIMIT} properties in all (at {path})")
        if totals.enum_values > ENUM_LIMIT:
            _refuse(where, f"more than {ENUM_LIMIT} enum values in all (at {path})")
        if totals.name_chars > NAME_CHARS_LIMIT:
            _refuse(
                where, f"property names, enum and const values over {NAME_CHARS_LIMIT} characters (at {path})"
            )


def past_bound(keyword: str, value: Any) -> bool:
    """Whether one keyword of a subschema asks more repetitions of the grammar than the bounds
    allow: a tool's grammar leaves it out (looser, never wrong: the tool checks its arguments)."""
    if keyword in REPETITION_KEYWORDS:
        return isinstance(value, int | float) and value > REPETITION_LIMIT
    if keyword == "pattern" and isinstance(value, str):
        single, nested = _repetitions(value)
        return single > REPETITION_LIMIT or nested > NESTED_REPETITION_LIMIT
    return False


def _check_pattern(pattern: str, path: str, where: str) -> None:
    single, nested = _repetitions(pattern)
    if single > REPETITION_LIMIT:
        _refuse(where, f"pattern repeats {single} times at {path}; at most {REPETITION_LIMIT}", "pattern")
    if nested > NESTED_REPETITION_LIMIT:
        limit = NESTED_REPETITION_LIMIT
        _refuse(where, f"pattern nests repetitions {nested} times over at {path}; at most {limit}", "pattern")


def check_grammar(grammar: str, where: str) -> None:
    """Refuse a GBNF grammar whose groups nest deeper than llama.cpp's parser recurses safely
    (whatever schema wrote it); strings and character classes are skipped."""
    depth = deepest = 0
    quote: str | None = None  # '"' inside a string literal, "]" inside a character class
    escaped = False
    for char in grammar:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char == '"':
            quote = '"'
        elif char == "[":
            quote = "]"
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    if deepest > GRAMMAR_NESTING_LIMIT:
        _refuse(where, f"its grammar nests {deepest} groups deep; at most {GRAMMAR_NESTING_LIMIT}")


def _subschemas(node: Any, path: str, depth: int) -> Iterator[tuple[str, int, Mapping[str, Any]]]:
    """Every subschema (a dict) with its JSONPath and level, the schema itself first."""
    if not isinstance(node, Mapping):
        return
    yield path, depth, node
    if depth > NESTING_LIMIT:
        return  # refused at this level: nothing deeper is read
    for keyword in _ONE:
        yield from _subschemas(node.get(keyword), f"{path}.{keyword}", depth + 1)
    for keyword in _LIST:
        if isinstance(items := node.get(keyword), list):
            for i, item in enumerate(items):
                yield from _subschemas(item, f"{path}.{keyword}[{i}]", depth + 1)
    for keyword in _MAP:
        if isinstance(named := node.get(keyword), Mapping):
            for name, item in named.items():
                yield from _subschemas(item, f"{path}.{keyword}.{name}", depth + 1)


def _repetitions(pattern: str) -> tuple[int, int]:
    """(the largest count one quantifier asks for, the largest product of bounded quantifiers
    nested in each other) in a regex. `*` and `+` count once: llama.cpp writes them as a
    recursive rule, not as copies."""
    single = nested = 0
    inside = [1]  # the largest repetition within each open group
    last = 1  # the repetition of the atom just read, which a quantifier multiplies
    at = 0
    while at < len(pattern):
        char = pattern[at]
        quantifier = _QUANTIFIER.match(pattern, at) if char == "{" else None
        if quantifier is not None or char in "*+?":
            count = int(quantifier[2] or quantifier[1]) if quantifier else 1
            single = max(single, count)
            if last > 1 and count > 1:
                nested = max(nested, last * count)
            inside[-1] = max(inside[-1], last * count)
            last = 1
            at = quantifier.end() if quantifier else at + 1
            continue
        if char == "(":
            inside.append(1)
            last = 1
        elif char == ")" and len(inside) > 1:
            last = inside.pop()
            inside[-1] = max(inside[-1], last)
        else:
            last = 1
            if char == "\\":
                at += 1  # the escaped character is a literal
            elif char == "[":
                at = _class_end(pattern, at)
        at += 1
    return single, nested


def _class_end(pattern: str, start: int) -> int:
    """Where the character class opened at `start` closes (the last index if never)."""
    at = start + 1
    while at < len(pattern):
        if pattern[at] == "\\":
            at += 1
        elif pattern[at] == "]" and at > start + 1:
            return at
        at += 1
    return len(pattern) - 1


def _refuse(where: str, problem: str, keyword: str | None = None) -> None:
    advice = (
        "llama.cpp cannot enforce a larger bound: lower it, or leave it out and check the answer yourself"
        if keyword
        else "make the schema smaller"
    )
    raise UnsupportedParameter(where, f"{problem}; {advice}")
