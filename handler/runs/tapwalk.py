"""The query columns' Tap (handler/query/extract.py) fed by the fast path (fastpath.py), which has a
run's simdjson document instead of ijson's events.

events.py hands a Tap the events of each tapped field, only at the depths the Tap asks for (its
limits). ``tap_field`` makes the same calls, in the same order, with the same values, by walking the
document: a subtree no event of which would reach the Tap is skipped, as its events would be. What
this cannot give exactly raises Unsure and the run is RunSplitter's: a float (ijson gives the
Decimal of its text), a repeated key or a key with a NUL in an object it walks.

Why not ``Tap.values`` (extract.py, for spans): it takes decoded dicts and lists, so the document
would be converted whole (every value of a 100 KB ``outputs``, where this lists keys and looks up
only the few on a path), a repeated key would keep its last value (events give both, and the first
wins), and a float would be the Decimal of its repr, not of its text (a cost of 2.50 would be
"2.5"; simdjson keeps no text). test_fastpath's query test fails with it.
"""

from __future__ import annotations

import simdjson

from handler.query.extract import Tap
from handler.runs.schema import Run

_MANY_KEYS = 32  # an object with more keys is first asked for its path keys (``in``)


class Unsure(Exception):
    """The walk cannot make exactly the calls events.py would."""


def tap_field(run: Run, key: str, value: simdjson.Object | simdjson.Array) -> None:
    """A tapped top-level field whose value is an object or an array (at depth 3)."""
    tap = run.tap = run.tap or Tap()
    _walk(tap, value, 3, tap.start(key))


def _walk(tap: Tap, container, depth: int, limits: tuple[int, int]) -> tuple[int, int]:
    """The events of ``container`` (its start made the depth ``depth``): keys and scalars at
    ``depth``, containers at ``depth + 1``. Returns the limits after its end."""
    key_limit, value_limit = limits
    if isinstance(container, simdjson.Object):
        if depth == 3 and key_limit == 3 and value_limit < 3 and len(container) > _MANY_KEYS:
            # Only a key on a path makes a call here (events.py): if none is in the object, no call
            # at all, and its keys (1,000 in a 100 KB payload) are not listed. (``in`` compares
            # whole keys, unescaped, in C; it costs as much as listing ~30 keys.)
            for path_key in tap.first:
                if path_key in container:
                    break
            else:
                return limits
        keys = list(container.keys())
        if len(set(keys)) != len(keys):
            raise Unsure  # container[key] would give the first value twice
        for key in keys:
            if depth <= key_limit:  # the map_key event
                if depth == 3 and value_limit < 3 and key not in tap.first:
                    key_limit, value_limit = 3, 2
                else:
                    key_limit, value_limit = tap.key(depth, key)
            if depth <= value_limit or depth + 1 <= key_limit:
                if "\x00" in key:
                    raise Unsure  # (pysimdjson looks a key up as a C string)
                key_limit, value_limit = _value(tap, container[key], depth, (key_limit, value_limit))
    else:
        for item in container:
            if depth <= value_limit or depth + 1 <= key_limit:
                key_limit, value_limit = _value(tap, item, depth, (key_limit, value_limit))
    return key_limit, value_limit


def _value(tap: Tap, value, depth: int, limits: tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, simdjson.Object | simdjson.Array):
        return _walk(tap, value, depth + 1, limits)
    if depth > limits[1]:
        return limits
    if isinstance(value, float):
        raise Unsure
    return tap.scalar(depth, value)
