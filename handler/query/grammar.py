"""LangSmith's filter language parsed into a tree: ``and(eq(run_type, "llm"), gt(latency, "5s"))``.

A small recursive-descent parser: the grammar has four productions, so a parsing library would add
a dependency without making it shorter, and this way every error names its position and every
limit (length, depth, size of a literal or a list, number of comparisons) is checked while parsing,
before anything is built from the input.

    expression := NAME "(" [argument ("," argument)*] ")"
    argument   := expression | NAME | literal | "[" [literal ("," literal)*] "]"
    literal    := STRING | NUMBER | "null" | "true" | "false"

Strings take double or single quotes and JSON's escapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from handler.base.errors import RunError

MAX_CHARS = 10_000
MAX_DEPTH = 32
MAX_CALLS = 200
MAX_LITERAL_CHARS = 1_000
MAX_LIST_ITEMS = 100

_SPACE = re.compile(r"\s*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_STRINGS = {'"': re.compile(r'"((?:[^"\\]|\\.)*)"', re.S), "'": re.compile(r"'((?:[^'\\]|\\.)*)'", re.S)}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_SIMPLE_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_WORDS = {"null": None, "true": True, "false": False}


@dataclass(frozen=True)
class Field:
    name: str
    pos: int


@dataclass(frozen=True)
class Literal:
    value: object  # str, int, float, bool, None, or a tuple of those (a list)
    pos: int


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple
    pos: int


def syntax_error(reason: str, pos: int) -> RunError:
    return RunError(400, f"filter: {reason} at position {pos}")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.calls = 0

    def skip(self) -> None:
        self.pos = _SPACE.match(self.text, self.pos).end()

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end"
            raise syntax_error(f"expected {char!r}, found {found}", self.pos)
        self.pos += 1

    def expression(self, depth: int) -> Call:
        self.skip()
        start = self.pos
        name = _NAME.match(self.text, self.pos)
        if name is None:
            raise syntax_error("expected a comparison such as eq(field, value)", start)
        if depth > MAX_DEPTH:
            raise syntax_error(f"nested deeper than {MAX_DEPTH} levels", start)
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise syntax_error(f"more than {MAX_CALLS} comparisons", start)
        self.pos = name.end()
        self.expect("(")
        args = []
        if self.peek() != ")":
            args.append(self.argument(depth))
            while self.peek() == ",":
                self.pos += 1
                args.append(self.argument(depth))
        self.expect(")")
        return Call(name.group(), tuple(args), start)

    def argument(self, depth: int) -> Call | Field | Literal:
        self.skip()
        start = self.pos
        char = self.peek()
        if char == "[":
            self.pos += 1
            items = []
            if self.peek() != "]":
                items.append(self.literal())
                while self.peek() == ",":
                    self.pos += 1
                    items.append(self.literal())
                    if len(items) > MAX_LIST_ITEMS:
                        raise syntax_error(f"a list of more than {MAX_LIST_ITEMS} values", start)
            self.expect("]")
            return Literal(tuple(item.value for item in items), start)
        name = _NAME.match(self.text, self.pos)
        if name is not None:
            after = _SPACE.match(self.text, name.end()).end()
            if self.text[after : after + 1] == "(":
                return self.expression(depth + 1)
            if name.group() in _WORDS:
                self.pos = name.end()
                return Literal(_WORDS[name.group()], start)
            self.pos = name.end()
            return Field(name.group(), start)
        return self.literal()

    def literal(self) -> Literal:
        self.skip()
        start = self.pos
        char = self.text[self.pos : self.pos + 1]
        if char in _STRINGS:
            found = _STRINGS[char].match(self.text, self.pos)
            if found is None:
                raise syntax_error("a string without its closing quote", start)
            if found.end() - start - 2 > MAX_LITERAL_CHARS * 6:
                raise syntax_error(f"a string longer than {MAX_LITERAL_CHARS} characters", start)
            value = _unescape(found.group(1), start)
            if len(value) > MAX_LITERAL_CHARS:
                raise syntax_error(f"a string longer than {MAX_LITERAL_CHARS} characters", start)
            self.pos = found.end()
            return Literal(value, start)
        number = _NUMBER.match(self.text, self.pos)
        if number is not None and number.group():
            text = number.group()
            if len(text) > 40:
                raise syntax_error("a number longer than 40 characters", start)
            self.pos = number.end()
            value = float(text) if any(c in text for c in ".eE") else int(text)
            if isinstance(value, float) and value in (float("inf"), float("-inf")):
                raise syntax_error("a number out of range", start)
            return Literal(value, start)
        word = _NAME.match(self.text, self.pos)
        if word is not None and word.group() in _WORDS:
            self.pos = word.end()
            return Literal(_WORDS[word.group()], start)
        found = repr(self.text[start]) if start < len(self.text) else "the end"
        raise syntax_error(f"expected a value (a string, number, null, true or false), found {found}", start)


def _unescape(body: str, pos: int) -> str:
    def one(match: re.Match) -> str:
        code = match.group(1)
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code]
        if len(code) == 5:
            return chr(int(code[1:], 16))
        raise syntax_error("an invalid escape in a string", pos + 1 + match.start())

    value = _ESCAPE.sub(one, body) if "\\" in body else body
    try:  # \ud83d\ude00 became two halves: join them; a lone half cannot be stored
        value = value.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise syntax_error("a string with an unpaired surrogate", pos) from None
    if "\x00" in value:
        raise syntax_error("a string with a NUL character", pos)
    return value


def parse(text: object) -> Call:
    """The tree of a filter expression; RunError 400 naming the position of the first mistake."""
    if not isinstance(text, str):
        raise RunError(400, "filter: must be a string")
    if len(text) > MAX_CHARS:
        raise RunError(400, f"filter: longer than {MAX_CHARS} characters")
    parser = _Parser(text)
    tree = parser.expression(1)
    parser.skip()
    if parser.pos != len(text):
        raise syntax_error(f"unexpected {text[parser.pos]!r} after the expression", parser.pos)
    return tree


def quote(value: str) -> str:
    """A string literal of the language (for tests and the viewer)."""
    return json.dumps(value)
