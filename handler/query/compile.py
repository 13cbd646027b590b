"""A parsed filter checked against the field table and turned into parameterised SQL.

``check`` makes a small checked tree (the comparisons with converted values); ``to_sql`` writes it
as a WHERE condition over a row alias, every value a placeholder and every name from the field
table; evaluate.py gives the same tree's meaning in Python. Every comparison is two-valued (a
missing value makes a comparison false, never NULL): ``not`` is then a plain negation, as a reader
expects, and SQL and Python agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from handler.base.errors import RunError
from handler.query import extract
from handler.query.fields import FIELDS, ORDERED_KINDS, PAIRS, SPECIAL, field_error, unknown_field, value_for
from handler.query.grammar import Call, Field, Literal, parse

COMPARISONS = ("eq", "neq", "gt", "gte", "lt", "lte")
_SQL_OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_CASTS = {"uuid": "::uuid", "time": "::timestamptz"}
_ARRAY_CASTS = {
    "uuid": "::uuid[]",
    "time": "::timestamptz[]",
    "text": "::text[]",
    "run_type": "::text[]",
    "status": "::text[]",
    "bool": "::boolean[]",
    "seconds": "::numeric[]",
    "int": "::numeric[]",
    "number": "::numeric[]",
}
_META_OPS = ("eq", "neq", "in", "like", "notlike")
METADATA_VALUE_CHARS = 1000  # what extraction keeps of a metadata value (extract.py)
KV_VALUE_CHARS = extract.KV_VALUE_CHARS  # of an inputs_kv / outputs_kv value (schema/0010)
# The partial GIN indexes of schema/0007 cover rows with tags or metadata; saying so lets them serve.
_META_SET = "{r}.{column} <> '{{}}'::jsonb"
_NULL_TRUE = ("neq", "notlike")  # value tests a pair with a null value (an object's key) passes


@dataclass(frozen=True)
class Node:
    """A checked comparison or connective. op: and, or, not, cmp, in, like, notlike, exists,
    tags_has, tags_any, meta (a group of key/value conditions matched by one pair of ``field``,
    the column: metadata, inputs_kv or outputs_kv),
    meta_has (containment), feedback (a group of feedback_key/score conditions matched by one
    feedback of the run), search."""

    op: str
    field: str | None = None
    cmp: str | None = None
    value: object = None
    children: tuple = ()


def check(text: object) -> Node:
    """The checked tree of a filter expression; RunError 400 for any mistake in it."""
    return _check(parse(text))


def _arity(call: Call, count: int) -> None:
    if len(call.args) != count:
        raise RunError(400, f"filter: {call.name} takes {count} argument(s) (at position {call.pos})")


def _field_and_value(call: Call) -> tuple[str, Literal]:
    _arity(call, 2)
    field, value = call.args
    if not isinstance(field, Field):
        raise RunError(
            400, f"filter: {call.name}'s first argument must be a field name (at position {call.pos})"
        )
    if not isinstance(value, Literal):
        raise RunError(
            400, f"filter: {call.name}'s second argument must be a value (at position {value.pos})"
        )
    if field.name not in FIELDS and field.name not in SPECIAL:
        raise unknown_field(field.name, field.pos)
    return field.name, value


def _check(call: Call) -> Node:
    name = call.name
    if name in ("and", "or"):
        if not call.args:
            raise RunError(400, f"filter: {name} needs at least one argument (at position {call.pos})")
        children = [_check(_expression(arg)) for arg in call.args]
        if name == "and":
            return _group_metadata(children)
        return Node("or", children=tuple(children))
    if name == "not":
        _arity(call, 1)
        return Node("not", children=(_check(_expression(call.args[0])),))
    if name == "search":
        if (
            len(call.args) != 1
            or not isinstance(call.args[0], Literal)
            or not isinstance(call.args[0].value, str)
        ):
            raise RunError(
                400, f'filter: search takes one string, as in search("timeout") (at position {call.pos})'
            )
        if not call.args[0].value.strip():
            raise RunError(400, f"filter: search needs some text (at position {call.pos})")
        return Node("search", value=call.args[0].value)
    if name == "exists":
        _arity(call, 1)
        field = call.args[0]
        if not isinstance(field, Field):
            raise RunError(400, f"filter: exists takes a field name (at position {call.pos})")
        if field.name == "tags":
            return Node("tags_any", value=None)
        if field.name not in FIELDS:
            raise unknown_field(field.name, field.pos)
        return Node("exists", field=field.name)
    if name not in (*COMPARISONS, "in", "like", "notlike", "has"):
        raise RunError(400, f"filter: unknown comparator {name!r} at position {call.pos}")
    field, literal = _field_and_value(call)
    if field == "tags":
        return _tags(call, literal)
    if field == "metadata":
        return _metadata_has(call, literal)
    if field in PAIRS:
        if PAIRS[field][0] != "metadata" and not extract.IO_KEYS:
            raise RunError(
                400,
                f"filter: the field {field} is not supported: inputs' and outputs' keys are kept only"
                f" when the server's IO_KEYS is above 0 (at position {call.pos})",
            )
        return Node("meta", field=PAIRS[field][0], children=(_metadata_condition(call, field, literal),))
    if field in ("feedback_key", "feedback_score", "feedback_value"):
        return Node("feedback", children=(_feedback_condition(call, field, literal),))
    spec = FIELDS[field]
    if name == "has":
        raise field_error(field, "takes no has(); has() is for tags and metadata", call.pos)
    if name == "in":
        if not isinstance(literal.value, tuple):
            raise field_error(field, 'in() takes a list, as in in(run_type, ["llm", "tool"])', literal.pos)
        values = tuple(dict.fromkeys(value_for(field, spec.kind, v, literal.pos) for v in literal.value))
        return Node("in", field=field, value=values)
    if isinstance(literal.value, tuple):
        raise field_error(field, f"{name}() takes one value, not a list", literal.pos)
    if name in ("like", "notlike"):
        if spec.kind != "text" or not isinstance(literal.value, str):
            raise field_error(
                field, f"takes no {name}(); like() is for text fields and takes a string", call.pos
            )
        _like_pattern(field, literal)
        return Node(name, field=field, value=literal.value)
    if literal.value is None:
        if name not in ("eq", "neq"):
            raise field_error(field, f"cannot be compared with null by {name}()", literal.pos)
        exists = Node("exists", field=field)
        return Node("not", children=(exists,)) if name == "eq" else exists
    if name not in ("eq", "neq") and spec.kind not in ORDERED_KINDS:
        raise field_error(
            field, f"takes eq, neq, in{', like' if spec.kind == 'text' else ''}, not {name}", call.pos
        )
    return Node("cmp", field=field, cmp=name, value=value_for(field, spec.kind, literal.value, literal.pos))


def _like_pattern(field: str, literal: Literal) -> None:
    """PostgreSQL refuses a pattern that ends in its escape character (a lone backslash)."""
    trailing = len(literal.value) - len(literal.value.rstrip("\\"))
    if trailing % 2:
        raise field_error(field, "like() pattern ends with a lone backslash", literal.pos)


def _expression(arg: object) -> Call:
    if not isinstance(arg, Call):
        raise RunError(400, f"filter: expected a comparison such as eq(field, value) at position {arg.pos}")
    return arg


def _tags(call: Call, literal: Literal) -> Node:
    if call.name == "in":
        if not isinstance(literal.value, tuple) or not all(isinstance(v, str) for v in literal.value):
            raise field_error("tags", "in() takes a list of strings", literal.pos)
        return Node("tags_any", value=literal.value)
    if call.name not in ("has", "eq", "neq") or not isinstance(literal.value, str):
        raise field_error("tags", 'takes has(tags, "tag"), eq, neq or in(tags, [...])', call.pos)
    node = Node("tags_has", value=literal.value)
    return Node("not", children=(node,)) if call.name == "neq" else node


def _metadata_has(call: Call, literal: Literal) -> Node:
    if call.name != "has" or not isinstance(literal.value, str):
        raise field_error("metadata", 'takes has(metadata, \'{"key": "value"}\')', call.pos)
    try:
        pairs = json.loads(literal.value)
    except ValueError:
        pairs = None
    if not isinstance(pairs, dict) or not pairs or any(isinstance(v, dict | list) for v in pairs.values()):
        raise field_error("metadata", "has() takes a JSON object of keys and plain values", literal.pos)
    return Node("meta_has", value=tuple(sorted((k, metadata_text(v)) for k, v in pairs.items())))


def metadata_text(value: object, limit: int = METADATA_VALUE_CHARS) -> str:
    """A metadata (or inputs / outputs) value as kept and compared: strings as they are, other
    values as JSON, cut at what extraction keeps."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:limit]


def _metadata_condition(call: Call, field: str, literal: Literal) -> tuple[str, str, object]:
    if call.name not in _META_OPS:
        raise field_error(field, f"takes {', '.join(_META_OPS)}, not {call.name}", call.pos)
    values = literal.value if call.name == "in" else (literal.value,)
    if call.name == "in" and not isinstance(literal.value, tuple):
        raise field_error(field, "in() takes a list", literal.pos)
    if any(v is None or isinstance(v, tuple) for v in values) or (
        call.name in ("like", "notlike") and not isinstance(literal.value, str)
    ):
        raise field_error(field, "takes a string or number", literal.pos)
    if call.name in ("like", "notlike"):
        _like_pattern(field, literal)
    column, side = PAIRS[field]
    limit = METADATA_VALUE_CHARS if column == "metadata" or side == "key" else KV_VALUE_CHARS
    texts = tuple(metadata_text(v, limit) for v in values)
    return (
        side,
        call.name,
        texts if call.name == "in" else texts[0],
    )


def _group_metadata(children: list[Node]) -> Node:
    """Within one and(), metadata_key and metadata_value conditions describe one pair, as in
    and(eq(metadata_key, "user"), eq(metadata_value, "u-42")) (input_ and output_ likewise, each
    of its own column); feedback_key, feedback_score and feedback_value one feedback, as in
    and(eq(feedback_key, "correctness"), eq(feedback_score, 1))."""
    groups = (("meta", "metadata"), ("meta", "inputs_kv"), ("meta", "outputs_kv"), ("feedback", None))
    for op, field in groups:
        found = [c for c in children if c.op == op and c.field == field]
        if len(found) > 1:
            group = Node(op, field=field, children=tuple(cond for node in found for cond in node.children))
            children = [c for c in children if not (c.op == op and c.field == field)] + [group]
    return children[0] if len(children) == 1 else Node("and", children=tuple(children))


def _feedback_condition(call: Call, field: str, literal: Literal) -> tuple[str, str, object]:
    """A condition on one feedback of the run (schema/0006): its key (a string), its score, or its
    value (as text: a string as it is, other JSON as JSON)."""
    if field == "feedback_value":
        if call.name not in ("eq", "neq", "in"):
            raise field_error(field, f"takes eq, neq, in, not {call.name}", call.pos)
        values = literal.value if call.name == "in" else (literal.value,)
        if (call.name == "in") != isinstance(literal.value, tuple) or any(
            v is None or isinstance(v, tuple) for v in values
        ):
            raise field_error(field, "takes a string or number (in: a list of them)", literal.pos)
        texts = tuple(metadata_text(v) for v in values)
        return ("value", call.name, texts if call.name == "in" else texts[0])
    if field == "feedback_key":
        if call.name not in ("eq", "neq", "in", "like", "notlike"):
            raise field_error(field, f"takes eq, neq, in, like, notlike, not {call.name}", call.pos)
        values = literal.value if call.name == "in" else (literal.value,)
        if (call.name == "in") != isinstance(literal.value, tuple) or not all(
            isinstance(v, str) for v in values
        ):
            raise field_error(field, "takes a string (in: a list of strings)", literal.pos)
        if call.name in ("like", "notlike"):
            _like_pattern(field, literal)
        return ("key", call.name, literal.value)
    if call.name not in COMPARISONS:
        raise field_error(field, f"takes eq, neq, gt, gte, lt, lte, not {call.name}", call.pos)
    if isinstance(literal.value, bool) or not isinstance(literal.value, int | float):
        raise field_error(field, "takes a number", literal.pos)
    return ("score", call.name, float(literal.value))


class SQL:
    """Writes checked trees as SQL over a row alias; ``params`` collects the values in order."""

    def __init__(self) -> None:
        self.params: list = []

    def __call__(self, node: Node, alias: str = "r") -> str:
        return getattr(self, "_" + node.op)(node, alias)

    def _p(self, value: object, cast: str = "") -> str:
        self.params.append(value)
        return "%s" + cast

    def _and(self, node: Node, r: str) -> str:
        return "(" + " AND ".join(self(c, r) for c in node.children) + ")"

    def _or(self, node: Node, r: str) -> str:
        return "(" + " OR ".join(self(c, r) for c in node.children) + ")"

    def _not(self, node: Node, r: str) -> str:
        return f"(NOT {self(node.children[0], r)})"

    def _cmp(self, node: Node, r: str) -> str:
        spec = FIELDS[node.field]
        column = spec.sql.format(r=r)
        test = f"{column} {_SQL_OPS[node.cmp]} {self._p(node.value, _CASTS.get(spec.kind, ''))}"
        if not spec.nullable:
            return f"({test})"
        if node.cmp == "neq":
            return f"({test} OR {column} IS NULL)"
        return f"({test} AND {column} IS NOT NULL)"

    def _in(self, node: Node, r: str) -> str:
        if not node.value:
            return "false"
        spec = FIELDS[node.field]
        column = spec.sql.format(r=r)
        array = self._p(list(node.value), _ARRAY_CASTS[spec.kind])
        return f"({column} = ANY({array}) AND {column} IS NOT NULL)"

    def _like(self, node: Node, r: str) -> str:
        column = FIELDS[node.field].sql.format(r=r)
        return f"({column} LIKE {self._p(node.value)} AND {column} IS NOT NULL)"

    def _notlike(self, node: Node, r: str) -> str:
        column = FIELDS[node.field].sql.format(r=r)
        return f"({column} NOT LIKE {self._p(node.value)} OR {column} IS NULL)"

    def _exists(self, node: Node, r: str) -> str:
        return f"({FIELDS[node.field].sql.format(r=r)} IS NOT NULL)"

    def _tags_has(self, node: Node, r: str) -> str:
        return f"({r}.tags <> '[]'::jsonb AND {r}.tags @> {self._p(json.dumps([node.value]), '::jsonb')})"

    def _tags_any(self, node: Node, r: str) -> str:
        if node.value is None:
            return f"({r}.tags <> '[]'::jsonb)"
        if not node.value:
            return "false"
        return f"({r}.tags <> '[]'::jsonb AND {r}.tags ?| {self._p(list(node.value), '::text[]')})"

    def _meta_has(self, node: Node, r: str) -> str:
        pairs = self._p(json.dumps(dict(node.value)), "::jsonb")
        return f"({_META_SET.format(r=r, column='metadata')} AND {r}.metadata @> {pairs})"

    def _meta(self, node: Node, r: str) -> str:
        conds, column = node.children, f"{r}.{node.field}"  # field: a column name from PAIRS
        is_set = _META_SET.format(r=r, column=node.field)
        eq_keys = [v for side, op, v in conds if side == "key" and op == "eq"]
        eq_values = [v for side, op, v in conds if side == "value" and op == "eq"]
        if len(conds) == 2 and len(eq_keys) == 1 and len(eq_values) == 1:  # the common pair: GIN
            pair = self._p(json.dumps({eq_keys[0]: eq_values[0]}), "::jsonb")
            return f"({is_set} AND {column} @> {pair})"
        if len(conds) == 1 and eq_keys:
            return f"({is_set} AND {column} ? {self._p(eq_keys[0])})"
        prefilter = f"{is_set} AND {column} ? {self._p(eq_keys[0])} AND " if eq_keys else ""
        tests = []
        for side, op, value in conds:
            if op == "in":
                test = f"m.{side} = ANY({self._p(list(value), '::text[]')})"
            else:
                sql_op = {"eq": "=", "neq": "<>", "like": "LIKE", "notlike": "NOT LIKE"}[op]
                test = f"m.{side} {sql_op} {self._p(value)}"
            # An object's or array's key has a null value: the negative tests pass it.
            tests.append(f"({test} OR m.value IS NULL)" if side == "value" and op in _NULL_TRUE else test)
        return (
            f"({prefilter}EXISTS (SELECT 1 FROM jsonb_each_text({column}) AS m(key, value)"
            f" WHERE {' AND '.join(tests)}))"
        )

    def _feedback(self, node: Node, r: str) -> str:
        tests = []
        for side, op, value in node.children:
            if side == "value":  # as text; a null value passes neq only
                text = "(f.value #>> '{}')"
                if op == "in":
                    tests.append(f"{text} = ANY({self._p(list(value), '::text[]')})")
                elif op == "neq":
                    tests.append(f"({text} <> {self._p(value)} OR {text} IS NULL)")
                else:
                    tests.append(f"{text} = {self._p(value)}")
            elif op == "in":
                tests.append(f"f.key = ANY({self._p(list(value), '::text[]')})")
            elif op in ("like", "notlike"):
                tests.append(f"f.key {'LIKE' if op == 'like' else 'NOT LIKE'} {self._p(value)}")
            elif side == "key":
                tests.append(f"f.key {_SQL_OPS[op]} {self._p(value)}")
            elif op == "neq":
                tests.append(f"(f.score <> {self._p(value)} OR f.score IS NULL)")
            else:
                tests.append(f"(f.score {_SQL_OPS[op]} {self._p(value)} AND f.score IS NOT NULL)")
        return (
            f"(EXISTS (SELECT 1 FROM feedback f WHERE f.tenant = {r}.tenant AND f.run_id = {r}.id"
            f" AND {' AND '.join(tests)}))"
        )

    def _search(self, node: Node, r: str) -> str:
        text = f"concat_ws(E'\\n', {r}.name, {r}.error, {r}.search_text)"
        return f"(strpos(lower({text}), lower({self._p(node.value)})) > 0)"


def where(tree: Node, alias: str = "r") -> tuple[str, list]:
    sql = SQL()
    return sql(tree, alias), sql.params


def has_search(node: Node) -> bool:
    return node.op == "search" or any(has_search(c) for c in node.children if isinstance(c, Node))
