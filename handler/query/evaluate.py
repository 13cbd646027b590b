"""A checked filter evaluated in Python over one run's fields: the meaning the SQL of compile.py
must have (the property test holds the two to each other).

``row`` maps the field names of fields.FIELDS to values (ids as strings, times as aware datetimes,
numbers as int, float or Decimal, None when missing), plus ``tags`` (a list of strings),
``metadata``, ``inputs_kv``, ``outputs_kv`` (dicts of strings, or None for an object's or array's
key), ``search_text`` and ``feedback`` ((key, score, value as text) triples).
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

from handler.query.compile import Node
from handler.query.fields import FIELDS


def _value(row: dict, field: str) -> object:
    if field == "is_root":
        return row.get("parent_run_id") is None
    if field == "latency":
        start, end = row.get("start_time"), row.get("end_time")
        return None if start is None or end is None else Decimal(str((end - start).total_seconds()))
    value = row.get(field)
    if value is not None and FIELDS[field].kind == "uuid":
        return str(uuid.UUID(str(value)))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


def like(pattern: str, text: str) -> bool:
    """SQL LIKE with PostgreSQL's default escape (a backslash)."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        i += 1
    return re.fullmatch("".join(out), text, re.S) is not None


def _compare(op: str, left: object, right: object) -> bool:
    if op == "eq":
        return left == right
    if op == "neq":
        return left != right
    if op == "gt":
        return left > right
    if op == "gte":
        return left >= right
    if op == "lt":
        return left < right
    return left <= right


def _meta_test(side: str, op: str, value: object, key: str, text: str | None) -> bool:
    subject = key if side == "key" else text
    if subject is None:  # a null value: the negative tests pass it (compile._NULL_TRUE)
        return op in ("neq", "notlike")
    if op == "in":
        return subject in value
    if op == "like":
        return like(value, subject)
    if op == "notlike":
        return not like(value, subject)
    return _compare(op, subject, value)


def _feedback_test(side: str, op: str, value: object, key: str, score: float | None, text) -> bool:
    if side == "key":
        return _meta_test("key", op, value, key, "")
    if side == "value":
        return _meta_test("value", op, value, key, text)
    if score is None:
        return op == "neq"
    return _compare(op, score, value)


def evaluate(node: Node, row: dict) -> bool:
    op = node.op
    if op == "and":
        return all(evaluate(c, row) for c in node.children)
    if op == "or":
        return any(evaluate(c, row) for c in node.children)
    if op == "not":
        return not evaluate(node.children[0], row)
    if op == "search":
        parts = (row.get("name"), row.get("error"), row.get("search_text"))
        text = "\n".join(p for p in parts if p is not None)  # as concat_ws
        return node.value.lower() in text.lower()
    if op == "tags_has":
        return node.value in row["tags"]
    if op == "tags_any":
        return bool(row["tags"]) if node.value is None else any(t in row["tags"] for t in node.value)
    if op == "meta_has":
        return all(row["metadata"].get(k) == v for k, v in node.value)
    if op == "meta":
        return any(
            all(_meta_test(side, cmp, value, key, text) for side, cmp, value in node.children)
            for key, text in row[node.field].items()
        )
    if op == "feedback":
        return any(
            all(_feedback_test(side, cmp, value, *feedback) for side, cmp, value in node.children)
            for feedback in row.get("feedback", ())
        )
    value = _value(row, node.field)
    if op == "exists":
        return value is not None
    if value is None:
        return op in ("notlike",) or (op == "cmp" and node.cmp == "neq")
    if op == "in":
        return value in node.value
    if op == "like":
        return like(node.value, value)
    if op == "notlike":
        return not like(node.value, value)
    return _compare(node.cmp, value, node.value)
