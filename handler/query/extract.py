"""What the query columns (schema/0007) take from a run's nested fields, gathered while the splitter
parses it: the run is neither held nor parsed a second time for them.

The splitter hands a Tap the events of the top-level fields in TAPPED, and only those at or above
the depths the Tap asks for (``limits``: map keys up to the first, scalars up to the second), so
the bulk of a payload never reaches it. The paths it reads:

    tags[*]                                   tags (strings)
    extra.metadata.<key>                      metadata: plain values, as text
    outputs.usage_metadata.*                  token counts and costs, first found wins, in this order
    extra.metadata.usage_metadata.*
    outputs.llm_output.token_usage.*          (LangChain's OpenAI-style llm_output)
    outputs.llm_output.usage.*                (Anthropic-style)
    outputs.generations[*][*].message.kwargs.usage_metadata.*   (LangChain's chat models)
    inputs.**, outputs.** strings             search text, the first SEARCH_TEXT_CHARS characters of each
    inputs.<key>, outputs.<key>               inputs_kv / outputs_kv (schema/0010), when IO_KEYS > 0:
                                              the first IO_KEYS top-level keys of each, their plain
                                              values as text (KV_VALUE_CHARS; null for an object, an
                                              array or null)

The top-level keys cost a Tap call per key and per plain value (the 5000_1kb workload, 22 keys a
run, spends +60% in the splitter with 8 of each kept), so they are off by default (IO_KEYS=0:
the filter fields answer 400) and bounded when on: past IO_KEYS keys of a field the Tap asks for
nothing more of it (inputs) or only its paths (outputs).
"""

from __future__ import annotations

import json
from decimal import Decimal

# runs.query_fields of a row these rules filled: 1, or 2 with inputs' and outputs' keys (IO_KEYS >
# 0), so that backfill-query under IO_KEYS > 0 refills the rows kept without (fields_version).
QUERY_FIELDS_VERSION = 1
TAPPED = frozenset({"tags", "extra", "outputs"})  # and inputs when SEARCH_TEXT_CHARS or IO_KEYS > 0
SEARCH_TEXT_CHARS = 0  # of inputs' and of outputs' strings (0: none); set from Settings (configure)
IO_KEYS = 0  # top-level keys of inputs and of outputs kept (0: none); set from Settings (configure)
MAX_TAGS = 100
MAX_TAG_CHARS = 256
MAX_METADATA_KEYS = 100
MAX_METADATA_KEY_CHARS = 256
METADATA_VALUE_CHARS = 1000  # compile.METADATA_VALUE_CHARS
MAX_TOKENS = 2**62
KV_KEY_CHARS = 256  # a longer key is not kept
KV_VALUE_CHARS = 100  # of a top-level value of inputs or outputs (and compared so, compile.py)
_DEEP = 1 << 30  # a limit no depth reaches
_OFF = (0, 0)
TOKEN_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_cost",
    "completion_cost",
    "total_cost",
)
# Leaf markers: ("meta",) a metadata value; (source, column) a token count or cost.
_META = ("meta",)
_NO_IO = (None, None)


def _usage(source: int, names: dict[str, str]) -> dict:
    return {key: (source, column) for key, column in names.items()}


_USAGE_METADATA = {
    "input_tokens": "prompt_tokens",
    "output_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
    "input_cost": "prompt_cost",
    "output_cost": "completion_cost",
    "total_cost": "total_cost",
}
_TOKEN_USAGE = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
}
_USAGE = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens", **_TOKEN_USAGE}
ITEMS = 0  # in PATHS: an array's items (no JSON key is an int)
# Paths below each tapped field: a dict descends, a tuple is a leaf; "*" is any key.
PATHS = {
    "tags": {},
    "inputs": {},
    "extra": {"metadata": {"*": _META, "usage_metadata": _usage(1, _USAGE_METADATA)}},
    "outputs": {
        "usage_metadata": _usage(0, _USAGE_METADATA),
        "llm_output": {"token_usage": _usage(2, _TOKEN_USAGE), "usage": _usage(3, _USAGE)},
        # LangChain's chat models: the first generation's message (serialized) has it.
        "generations": {
            ITEMS: {ITEMS: {"message": {"kwargs": {"usage_metadata": _usage(4, _USAGE_METADATA)}}}}
        },
    },
}


def fields_version() -> int:
    return 2 if IO_KEYS else QUERY_FIELDS_VERSION


def configure(search_text_chars: int, io_keys: int = 0) -> None:
    """SEARCH_TEXT_CHARS and IO_KEYS from Settings; both 0 leave inputs untapped."""
    global SEARCH_TEXT_CHARS, IO_KEYS, TAPPED
    SEARCH_TEXT_CHARS, IO_KEYS = search_text_chars, io_keys
    tap_inputs = search_text_chars > 0 or io_keys > 0
    TAPPED = frozenset({"tags", "extra", "outputs", *(("inputs",) if tap_inputs else ())})


class Tap:
    """One run's query fields, filled from the events of its tapped fields."""

    __slots__ = (
        "tags",
        "metadata",
        "usage",
        "first",
        "texts",
        "text_left",
        "field",
        "keys",
        "nodes",
        "trie",
        "text_on",
        "kv",
        "kv_key",
        "io",
    )

    def __init__(self) -> None:
        # Kept small: most runs have a Tap (for outputs) and most Taps find nothing.
        self.tags: list[str] = []
        self.metadata: dict[str, str] = {}
        self.usage: list[dict] | None = None  # per source, in order of precedence, once one is found
        self.texts: list[str] = []
        self.io: list | tuple = _NO_IO  # inputs' and outputs' top-level keys (IO_KEYS > 0)

    def start(self, field: str) -> tuple[int, int]:
        """A tapped field's value begins (an object or array at depth 3): the limits for it."""
        self.field, self.first = field, PATHS[field]
        self.keys, self.nodes = [], []
        self.text_left = SEARCH_TEXT_CHARS  # for each of inputs and outputs
        self.text_on = field in ("inputs", "outputs") and self.text_left > 0
        self.kv = self.kv_key = None
        if IO_KEYS and field in ("inputs", "outputs"):
            if self.io is _NO_IO:
                self.io = [None, None]
            self.kv = self.io[field == "outputs"] = {}
            self.trie = (3, 3)
        else:
            self.trie = (0, 3) if field == "tags" else (3, 2) if PATHS[field] else _OFF
        return (_DEEP, _DEEP) if self.text_on else self.trie

    def key(self, depth: int, key: str) -> tuple[int, int]:
        if depth == 3:
            self.kv_key = None
            kv = self.kv
            if kv is not None and len(kv) >= IO_KEYS:
                self.kv = kv = None  # enough: from this key on, the field's paths only
            if kv is not None:  # a top-level key of inputs or outputs, to keep
                if len(key) <= KV_KEY_CHARS:
                    self.kv_key = key = key.replace("\x00", "")
                    kv.setdefault(key, None)  # its plain value, if it has one, comes next
                if key not in self.first:  # no path through it: its value only
                    self.keys, self.nodes, self.trie = [key], [None], (3, 3)
                    return (_DEEP, _DEEP) if self.text_on else self.trie
            if self.field == "inputs":  # no path: nothing more (but text, when it is kept)
                self.trie = _OFF
        if self.field == "inputs":
            return (_DEEP, _DEEP) if self.text_on else self.trie
        keys, nodes, i = self.keys, self.nodes, depth - 3
        if len(keys) > i:
            del keys[i:], nodes[i:]
        while len(keys) < i:  # a depth without a key is an array's: a path goes on through ITEMS
            above = PATHS[self.field] if not nodes else nodes[-1]
            keys.append(None)
            nodes.append(above.get(ITEMS) if isinstance(above, dict) else None)
        parent = PATHS[self.field] if i == 0 else nodes[i - 1]
        node = parent.get(key, parent.get("*")) if isinstance(parent, dict) else None
        keys.append(key)
        nodes.append(node)
        if isinstance(node, dict):
            self.trie = (_DEEP, _DEEP)
        elif node is not None:
            self.trie = (depth, depth)  # a leaf: its value, not what is inside it
        else:
            self.trie = (depth, depth - 1)  # siblings' keys, nothing of this one's value
        return (_DEEP, _DEEP) if self.text_on else self.trie

    def scalar(self, depth: int, value: object) -> tuple[int, int]:
        if depth == 3 and self.kv_key is not None:
            key, self.kv_key = self.kv_key, None
            if value is not None:
                text = (
                    value
                    if isinstance(value, str)
                    else json.dumps(value if isinstance(value, bool | int) else float(value))
                )
                self.io[self.field == "outputs"][key] = text[:KV_VALUE_CHARS].replace("\x00", "")
        if self.field == "tags":
            if len(self.tags) < MAX_TAGS and isinstance(value, str):
                self.tags.append(value[:MAX_TAG_CHARS].replace("\x00", ""))
            return self.trie
        if self.text_on and isinstance(value, str):
            self.texts.append(value[: self.text_left])
            self.text_left -= min(len(value), self.text_left)
            if self.text_left <= 0:
                self.text_on = False
        # (a path's inner node given a scalar, e.g. "usage_metadata": null, is no leaf: passed over)
        if len(self.keys) == depth - 2 and self.nodes and isinstance(self.nodes[-1], tuple):
            self._leaf(self.nodes[-1], self.keys[-1], value)
        return (_DEEP, _DEEP) if self.text_on else self.trie

    def _leaf(self, leaf: tuple, key: str, value: object) -> None:
        if leaf is _META:
            if value is None or len(self.metadata) >= MAX_METADATA_KEYS or len(key) > MAX_METADATA_KEY_CHARS:
                return
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value if isinstance(value, bool | int) else float(value))
            )
            self.metadata.setdefault(key.replace("\x00", ""), text[:METADATA_VALUE_CHARS].replace("\x00", ""))
            return
        source, column = leaf
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            return
        if isinstance(value, Decimal) and not value.is_finite():
            return
        if column.endswith("_tokens"):
            if value != int(value) or not 0 <= value < MAX_TOKENS:
                return
            value = int(value)
        elif not 0 <= value < MAX_TOKENS:
            return
        if self.usage is None:
            self.usage = [{}, {}, {}, {}, {}]
        self.usage[source].setdefault(column, value)

    def values(self, field: str, value: dict | list) -> None:
        """A tapped field given as a decoded value (a span's run, runs/schema.run_of): the calls
        the splitter's events would make (runs/events.py), in the same order, with the same limits;
        numbers as ijson gives them (int, or Decimal)."""
        limits = list(self.start(field))
        self._walk(value, 3, limits)

    def _walk(self, value: dict | list, depth: int, limits: list) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if depth <= limits[0]:
                    if depth == 3 and limits[1] < 3 and key not in self.first:
                        limits[:] = 3, 2  # as runs/events.py: a key no path goes through
                    else:
                        limits[:] = self.key(depth, key)
                self._item(item, depth, limits)
        else:
            for item in value:
                self._item(item, depth, limits)

    def _item(self, item: object, depth: int, limits: list) -> None:
        if isinstance(item, dict | list):
            # Limits change only by a call: past both, nothing inside calls (the events loop
            # passes over such a value's events), so it is not walked.
            if depth < limits[0] or depth < limits[1]:
                self._walk(item, depth + 1, limits)
        elif depth <= limits[1]:
            limits[:] = self.scalar(depth, Decimal(repr(item)) if isinstance(item, float) else item)

    def columns(self) -> tuple:
        """The values of the query columns (store/rows.RunRow, ``tags`` to ``outputs_kv``)."""
        inputs, outputs = self.io
        if not (self.tags or self.metadata or self.usage or self.texts or inputs or outputs):
            return NO_TAP
        usage = next((found for found in self.usage if found), None) if self.usage else None
        if usage is None:
            tokens: tuple = (None,) * 6
        else:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            total = usage.get("total_tokens")
            if total is None and (prompt is not None or completion is not None):
                total = (prompt or 0) + (completion or 0)
            cost = usage.get("total_cost")
            if cost is None and ("prompt_cost" in usage or "completion_cost" in usage):
                cost = usage.get("prompt_cost", 0) + usage.get("completion_cost", 0)
            costs = (usage.get("prompt_cost"), usage.get("completion_cost"), cost)
            tokens = (prompt, completion, total, *(None if c is None else str(c) for c in costs))
        return (
            json.dumps(self.tags) if self.tags else "[]",
            json.dumps(self.metadata) if self.metadata else "{}",
            *tokens,
            search_text(self.tags, self.metadata, self.texts),
            json.dumps(inputs) if inputs else "{}",
            json.dumps(outputs) if outputs else "{}",
        )


def search_text(tags: list[str], metadata: dict[str, str], texts: list[str]) -> str | None:
    """What search() reads beyond the name and the error (the row has those): None when empty."""
    if not (tags or metadata or texts):
        return None
    return "\n".join([*tags, *metadata.values(), *texts]).replace("\x00", "")


NO_TAP = ("[]", "{}", None, None, None, None, None, None, None, "{}", "{}")


def query_columns(run) -> tuple:
    """A parsed run's query columns (store/rows.RunRow, from ``tags`` to ``outputs_kv``)."""
    return NO_TAP if run.tap is None else run.tap.columns()  # None: no tapped field came
