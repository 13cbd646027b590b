# ruff: noqa: E501  (the tables of cases read best one case a line)
"""The filter language without a database: parsing, checking, the SQL it compiles to (only
placeholders carry values), the Python meaning of each comparator; and what ingestion extracts for
it (extract.Tap, fed by the splitter's events)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from handler.base.errors import RunError
from handler.query import extract
from handler.query.compile import check, where
from handler.query.evaluate import evaluate, like
from handler.query.extract import query_columns
from handler.query.grammar import MAX_CALLS, MAX_CHARS, MAX_DEPTH, Call, Field, Literal, parse
from handler.runs.splitter import parse_run
from handler.store.rows import RunRow

QUERY_COLUMNS = RunRow._fields[RunRow._fields.index("tags") : RunRow._fields.index("query_fields")]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROW = {
    "id": "00000000-0000-0000-0000-000000000001",
    "trace_id": "00000000-0000-0000-0000-000000000001",
    "parent_run_id": None,
    "name": "ChatOpenAI",
    "run_type": "llm",
    "status": "error",
    "error": "TimeoutError: took too long",
    "start_time": T0,
    "end_time": T0 + timedelta(seconds=7),
    "total_tokens": 6000,
    "prompt_tokens": 5000,
    "completion_tokens": 1000,
    "tags": ["prod", "beta"],
    "metadata": {"user_id": "u-42", "env": "prod"},
    "search_text": "prod\nhello world",
    "inputs_kv": {"question": "why?", "messages": None},
    "outputs_kv": {"answer": "because", "n": "3"},
    "feedback": [("correctness", 1.0, None), ("helpful", None, "yes")],
}


@pytest.fixture(autouse=True)
def io_keys():
    """Inputs' and outputs' keys kept, as IO_KEYS=8 asks (the fields are refused without)."""
    extract.configure(0, 8)
    yield
    extract.configure(0)


def error_of(text: str) -> str:
    with pytest.raises(RunError) as raised:
        check(text)
    assert raised.value.status == 400
    return str(raised.value)


def test_parse_tree():
    tree = parse(' and( eq(run_type, "llm"), in(name, ["a", \'b\']), gt(latency, 5.5), eq(error, null) ) ')
    assert tree == Call(
        "and",
        (
            Call("eq", (Field("run_type", 9), Literal("llm", 19)), 6),
            Call("in", (Field("name", 30), Literal(("a", "b"), 36)), 27),
            Call("gt", (Field("latency", 52), Literal(5.5, 61)), 49),
            Call("eq", (Field("error", 70), Literal(None, 77)), 67),
        ),
        1,
    )


def test_string_escapes():
    assert parse(r'eq(name, "a\"b\\c\u00e9\ud83d\ude00")').args[1].value == 'a"b\\c\u00e9\U0001f600'
    assert "unpaired surrogate" in error_of(r'eq(name, "\ud83d")')
    assert "invalid escape" in error_of(r'eq(name, "\x41")')
    assert "NUL" in error_of(r'eq(name, "\u0000")')


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ('eq(name, "x"', 12),
        ('eq(name "x")', 8),
        ('eq(name, "x"))', 13),
        ("eq(name, )", 9),
        ('eq(name, "x) ', 9),
        ("", 0),
        ("   ", 3),
        ("name", 4),
        ('eq(name, "x") and', 14),
        ("eq(name, [1, 2)", 14),
    ],
)
def test_syntax_errors_name_the_position(text, position):
    assert f"at position {position}" in error_of(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('eq(nonsense, "x")', "unknown field 'nonsense'"),
        ('eq(thread_id, "x")', "thread_id is not supported"),
        ('like(feedback_value, "x")', "feedback_value takes eq, neq, in"),
        ("eq(input_value, null)", "input_value takes a string or number"),
        ("gt(output_key, 1)", "output_key takes eq, neq, in, like, notlike"),
        ('gt(feedback_score, "high")', "feedback_score takes a number"),
        ('gt(feedback_key, "x")', "feedback_key takes eq, neq, in"),
        ('frobnicate(name, "x")', "unknown comparator 'frobnicate'"),
        ('gt(name, "x")', "name takes eq, neq, in, like"),
        ('eq(run_type, "robot")', "run_type is one of"),
        ('eq(id, "not-a-uuid")', "id takes a UUID"),
        ('gt(latency, "soon")', "latency takes seconds"),
        ('gt(start_time, "yesterday")', "start_time takes an ISO 8601"),
        ('gt(total_tokens, "many")', "total_tokens takes a number"),
        ("eq(tags, 5)", "tags takes has"),
        ('has(name, "x")', "has() is for tags and metadata"),
        ('has(metadata, "not json")', "metadata has() takes a JSON object"),
        ("search(5)", "search takes one string"),
        ('search("  ")', "search needs some text"),
        ('not(eq(name, "a"), eq(name, "b"))', "not takes 1 argument"),
        ("and()", "and needs at least one argument"),
        ('eq("name", "x")', "first argument must be a field name"),
        ("eq(name, name)", "second argument must be a value"),
        ('and(name, eq(name, "x"))', "expected a comparison"),
        ('in(run_type, "llm")', "in() takes a list"),
        ("gt(start_time, null)", "cannot be compared with null"),
    ],
)
def test_checking_errors(text, reason):
    assert reason in error_of(text)


def test_limits():
    assert "nested deeper" in error_of("not(" * (MAX_DEPTH + 1) + 'eq(name, "x")' + ")" * (MAX_DEPTH + 1))
    assert "comparisons" in error_of("or(" + ", ".join(['eq(name, "x")'] * (MAX_CALLS + 1)) + ")")
    assert "longer than" in error_of('eq(name, "' + "x" * MAX_CHARS + '")')
    assert "longer than 1000" in error_of('eq(name, "' + "x" * 1001 + '")')
    assert "list of more than" in error_of("in(name, [" + ", ".join(['"x"'] * 101) + "])")
    assert "number longer" in error_of("gt(total_tokens, " + "9" * 41 + ")")
    assert "out of range" in error_of("gt(total_tokens, 1e999)")


def test_values_never_reach_the_sql_text():
    hostile = "x'); DROP TABLE runs; --"
    sql, params = where(check(f'or(eq(name, "{hostile}"), has(tags, "{hostile}"), search("{hostile}"))'))
    assert "DROP" not in sql and "x'" not in sql
    assert hostile in params
    assert sql.count("%s") == len(params)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('eq(run_type, "llm")', True),
        ('neq(run_type, "llm")', False),
        ('in(run_type, ["tool", "llm"])', True),
        ('eq(status, "ERROR")', True),
        ("neq(error, null)", True),
        ("eq(error, null)", False),
        ("eq(is_root, true)", True),
        ('gt(latency, "5s")', True),
        ('gt(latency, "7500ms")', False),
        ("lte(latency, 7)", True),
        ("gt(total_tokens, 5000)", True),
        ("gte(prompt_tokens, 5000)", True),
        ("lt(completion_tokens, 1000)", False),
        ("gt(total_cost, 0)", False),
        ("neq(total_cost, 1)", True),
        ("exists(total_cost)", False),
        ('has(tags, "prod")', True),
        ('neq(tags, "prod")', False),
        ('in(tags, ["x", "beta"])', True),
        ("exists(tags)", True),
        ('and(eq(metadata_key, "user_id"), eq(metadata_value, "u-42"))', True),
        ('and(eq(metadata_key, "env"), eq(metadata_value, "u-42"))', False),
        ('eq(metadata_key, "env")', True),
        ('eq(metadata_value, "prod")', True),
        ('and(eq(metadata_key, "user_id"), like(metadata_value, "u-%"))', True),
        ('has(metadata, \'{"env": "prod"}\')', True),
        ('has(metadata, \'{"env": "dev"}\')', False),
        ('search("TIMEOUT")', True),
        ('search("nowhere")', False),
        ('like(name, "Chat%")', True),
        ('notlike(name, "Chat%")', False),
        ('gt(start_time, "2025-12-31T23:59:59Z")', True),
        ('lt(end_time, "2026-01-01T00:00:07")', False),
        ('not(eq(name, "other"))', True),
        ('or(eq(name, "other"), eq(run_type, "llm"))', True),
        ('and(eq(name, "other"), eq(run_type, "llm"))', False),
        ("eq(parent_run_id, null)", True),
        ('eq(trace_id, "00000000-0000-0000-0000-000000000001")', True),
        ('and(eq(feedback_key, "correctness"), eq(feedback_score, 1))', True),
        ('and(eq(feedback_key, "correctness"), lt(feedback_score, 1))', False),
        ('and(eq(feedback_key, "helpful"), neq(feedback_score, 1))', True),
        ('and(eq(feedback_key, "helpful"), gt(feedback_score, 0))', False),
        ('eq(feedback_key, "nope")', False),
        ("gte(feedback_score, 1)", True),
        ('eq(feedback_value, "yes")', True),
        ('and(eq(feedback_key, "correctness"), eq(feedback_value, "yes"))', False),
        ('and(eq(feedback_key, "correctness"), neq(feedback_value, "yes"))', True),
        ('in(feedback_value, ["no", "yes"])', True),
        ('eq(input_key, "messages")', True),
        ('and(eq(input_key, "question"), eq(input_value, "why?"))', True),
        ('and(eq(input_key, "question"), eq(output_value, "because"))', True),
        ('and(eq(input_key, "messages"), eq(input_value, "why?"))', False),
        ('and(eq(input_key, "messages"), neq(input_value, "why?"))', True),
        ('and(eq(output_key, "n"), eq(output_value, 3))', True),
        ('eq(output_key, "question")', False),
        ('like(output_value, "be%")', True),
        ('notlike(input_value, "%")', True),
        ('eq(input_value, "because")', False),
    ],
)
def test_meaning(text, expected):
    assert evaluate(check(text), ROW) is expected


def test_like():
    assert like("a%c", "abbbc") and like("a_c", "abc") and not like("a_c", "abbc")
    assert like(r"100\%", "100%") and not like(r"100\%", "1000")
    assert like("a.c", "a.c") and not like("a.c", "abc")


def columns_of(run: dict) -> dict:
    """The query columns ingestion gives a run (the splitter's events through extract.Tap)."""
    body = json.dumps({"trace_id": "00000000-0000-0000-0000-000000000001", "name": "n", **run}).encode()
    values = query_columns(parse_run(body, 1 << 20, 64, "run"))
    return dict(zip(QUERY_COLUMNS, values, strict=True))


USAGE = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}


@pytest.mark.parametrize(
    ("run", "tokens"),
    [
        ({"outputs": {"usage_metadata": USAGE}}, (3, 4, 7)),
        ({"extra": {"metadata": {"usage_metadata": {"input_tokens": 5, "output_tokens": 6}}}}, (5, 6, 11)),
        ({"outputs": {"llm_output": {"token_usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}}}, (1, 2, 3)),
        ({"outputs": {"llm_output": {"usage": {"input_tokens": 8, "output_tokens": 9}}}}, (8, 9, 17)),
        (
            {"outputs": {"generations": [[{"text": "hi", "message": {"lc": 1, "kwargs": {"content": "hi", "usage_metadata": USAGE}}}]]}},
            (3, 4, 7),
        ),
        # The first source found wins, whatever the order of the keys.
        ({"outputs": {"llm_output": {"token_usage": {"total_tokens": 99}}, "usage_metadata": USAGE}}, (3, 4, 7)),
        # Not at a named path: not counted.
        ({"outputs": {"x": {"usage_metadata": USAGE}, "generations": [{"message": {"kwargs": {"usage_metadata": USAGE}}}]}}, (None, None, None)),
        ({"inputs": {"usage_metadata": USAGE}, "outputs": {"usage_metadata": {"total_tokens": "7"}}}, (None, None, None)),
        ({"outputs": {"usage_metadata": {"input_tokens": -1, "output_tokens": 1.5, "total_tokens": True}}}, (None, None, None)),
    ],
)  # fmt: skip
def test_token_paths(run, tokens):
    found = columns_of(run)
    assert (found["prompt_tokens"], found["completion_tokens"], found["total_tokens"]) == tokens


def test_tags_metadata_and_search_text():
    found = columns_of(
        {
            "tags": ["a", "b"],
            "extra": {"metadata": {"user": "u-1", "n": 5, "f": 1.5, "ok": True, "none": None, "deep": {"k": 1}, "list": [1]}},
            "inputs": {"q": "hello"},
        }
    )  # fmt: skip
    assert json.loads(found["tags"]) == ["a", "b"]
    assert json.loads(found["metadata"]) == {"user": "u-1", "n": "5", "f": "1.5", "ok": "true"}
    assert found["search_text"] == "a\nb\nu-1\n5\n1.5\ntrue"  # inputs' text only with SEARCH_TEXT_CHARS
    assert columns_of({})["search_text"] is None and columns_of({})["tags"] == "[]"


KV_RUN = {
    "inputs": {
        "q": "hello", "n": 5, "f": 1.5, "ok": True, "none": None, "k" * 300: "too long a key",
        "deep": {"k": "v"}, "list": [1, "two"], "long": "x" * 150, "k9": "past the bound", "k10": 1,
    },
    # The token path comes after the kept keys: still found.
    "outputs": {"answer": "yes", **{f"o{i}": i for i in range(10)}, "usage_metadata": USAGE},
}  # fmt: skip


@pytest.mark.parametrize("chars", [0, 40])
def test_input_and_output_keys(chars):
    """The first KV_KEYS top-level keys of inputs and outputs, plain values as text (cut at
    KV_VALUE_CHARS), null for objects, arrays and null; the same with search text kept or not."""
    extract.configure(chars, 8)
    found = columns_of(KV_RUN)
    assert json.loads(found["inputs_kv"]) == {
        "q": "hello", "n": "5", "f": "1.5", "ok": "true", "none": None, "deep": None, "list": None, "long": "x" * 100,
    }  # fmt: skip
    assert json.loads(found["outputs_kv"]) == {"answer": "yes", **{f"o{i}": str(i) for i in range(7)}}
    assert (found["prompt_tokens"], found["total_tokens"]) == (3, 7)
    assert columns_of({"inputs": {}})["inputs_kv"] == "{}"


def test_input_and_output_keys_are_off_by_default():
    """IO_KEYS=0 (the default): nothing kept, and the fields say why (400)."""
    extract.configure(0)
    found = columns_of(KV_RUN)
    assert (found["inputs_kv"], found["outputs_kv"], found["total_tokens"]) == ("{}", "{}", 7)
    assert "IO_KEYS" in error_of('and(eq(input_key, "q"), eq(output_value, "x"))')
    assert evaluate(check('eq(metadata_key, "user_id")'), ROW)  # metadata is not concerned
