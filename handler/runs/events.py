"""The grammar and the fields of a streamed array of runs, as ijson's events report them.

ijson's push parser (yajl2 C backend) reads every byte given to it and reports events; this class
follows them to know where each run starts and ends, how deep it is, and whether its top-level
fields keep the rules of schema.py. The splitter (splitter.py) decides which bytes to give it.
"""

from __future__ import annotations

import ijson

from handler.base.errors import RunError
from handler.query import extract
from handler.query.extract import Tap
from handler.runs.jsonbytes import first_line
from handler.runs.schema import (
    ITEM_ERRORS,
    ITEM_EVENTS,
    REQUIRED,
    FieldError,
    Run,
    check_field,
    check_required,
)


class RunEvents:
    """Parser state: the run being received, the one just closed, depth and counts."""

    def __init__(
        self,
        max_runs: int,
        max_depth: int = 512,
        required: tuple[str, ...] = REQUIRED,
        label: str | None = None,
        noun: str = "run",
    ) -> None:
        self.max_runs = max_runs
        self.required = required
        self.label = label  # what errors call the run, when not "run <index>"
        self.noun = noun  # errors say "<noun> <index>"
        # Counted from the top-level array: a run's own fields are at depth 2.
        self.max_depth = max_depth
        self._events = ijson.sendable_list()
        # basic_parse: events without prefixes, which cost ijson a string per event.
        self._parser = ijson.basic_parse_coro(self._events)
        self._seen_array = False
        self._ended = False  # the array has closed: only whitespace may follow
        self._run: Run | None = None  # the run being received
        self._closed: Run | None = None  # the run the last piece closed
        self._keys: set[str] = set()
        self._key: str | None = None  # a run's field whose value comes next
        self._items: str | None = None  # the array field (tags, events) whose items come next
        self._depth = 0  # 1 inside the array, 2 inside a run
        # The query columns' hook (handler/query/extract.py): inside a field of TAPPED, map keys at
        # depths up to the first limit and scalars up to the second go to the run's Tap.
        self._limits = (0, 0)
        self._count = 0
        self._event_count = 0

    def _parse(self, chunk: bytes, last: bool) -> None:
        if self._events is None:
            raise RunError(400, "invalid JSON: parsing already failed")
        try:
            if last:
                self._parser.close()
            else:
                self._parser.send(chunk)
        except (ijson.JSONError, ValueError, ArithmeticError, SystemError) as e:
            if isinstance(e, ijson.JSONError):
                # Events parsed before the error still count: they tell which run was broken.
                self._validate()
            else:
                # Never read the events after such an error: ijson 3.x can leave an event whose
                # value is a NULL pointer in the list, and touching it crashes the process.
                self._events = None
            raise self._invalid(e) from None
        self._validate()

    def _invalid(self, e: Exception) -> RunError:
        """The 400 for an error of yajl or ijson while parsing the run being received."""
        # ijson turns every string and number into a Python value: bytes that yajl lets
        # through (overlong UTF-8, encoded surrogates) fail to decode, and numbers beyond
        # Python's limits (over 4300 digits, an exponent of 10**18) fail to convert.
        if isinstance(e, ijson.JSONError):
            message = first_line(e)
        elif isinstance(e, UnicodeError):
            message = "invalid UTF-8 or an unpaired surrogate"
        else:
            message = "a number too large to handle"
        where = self._name(self._run.index) if self._run else "body"
        index = self._run.index if self._run else None
        return RunError(400, f"invalid JSON in {where}: {message}", index)

    def _validate(self) -> None:
        """Check the events ijson produced; runs are the objects at depth 2 (inside the array).

        This loop sees every token of the body, so it keeps its state in locals and tests the
        most frequent events first.
        """
        events = self._events
        self._event_count += len(events)
        depth, key, items = self._depth, self._key, self._items
        key_limit, value_limit = self._limits
        tap = self._run.tap if self._run is not None else None
        for event, value in events:
            if key is not None:  # the first event of a run's top-level field
                try:
                    check_field(self._run, key, event, value, self.required)
                except FieldError as e:
                    raise self._error(str(e)) from None
                if event == "start_map" or event == "start_array":
                    depth += 1  # 3, below any sensible max_depth
                    if key in ITEM_EVENTS:
                        items = key
                    if key in extract.TAPPED:
                        tap = self._run.tap = self._run.tap or Tap()
                        key_limit, value_limit = tap.start(key)
                key = None
            elif event == "map_key":
                if depth == 2:
                    if value in self._keys:
                        raise self._error(f"duplicate key {value!r}")
                    self._keys.add(value)
                    key = value
                elif depth <= key_limit:
                    if depth == 3 and value_limit < 3 and value not in tap.first:
                        key_limit, value_limit = 3, 2  # a field's key no path goes through: no call
                    else:
                        key_limit, value_limit = tap.key(depth, value)
            elif event == "string" and depth > 2 and items is None:
                # The bulk of a payload: a string inside a field has nothing to check.
                if depth <= value_limit:
                    key_limit, value_limit = tap.scalar(depth, value)
            elif event == "start_map":
                depth += 1
                if depth > self.max_depth:
                    raise self._too_deep()
                if depth == 4 and items is not None and event not in ITEM_EVENTS[items]:
                    raise self._error(ITEM_ERRORS[items])
                if depth == 2:
                    self._start_run()
                elif depth == 1:
                    raise RunError(400, "body must be a JSON array of runs")
            elif event == "end_map":
                depth -= 1
                if depth == 2:
                    key_limit = value_limit = 0  # a field's value ended
                elif depth == 1:
                    self._finish_run()
                    tap = None
            elif event == "start_array":
                depth += 1
                if depth > self.max_depth:
                    raise self._too_deep()
                if depth == 4 and items is not None:
                    raise self._error(ITEM_ERRORS[items])
                if depth == 1:
                    self._seen_array = True
                elif depth == 2:
                    raise RunError(400, f"run {self._count} must be an object, got array", self._count)
            elif event == "end_array":
                depth -= 1
                if depth == 2:
                    items = None
                    key_limit = value_limit = 0
                elif depth == 0:
                    self._ended = True
            elif depth < 2:  # a scalar outside any run
                if depth == 0:
                    raise RunError(400, "body must be a JSON array of runs")
                raise RunError(400, f"run {self._count} must be an object, got {event}", self._count)
            elif items is not None and depth == 3 and event not in ITEM_EVENTS[items]:
                raise self._error(ITEM_ERRORS[items])
            elif depth <= value_limit:  # a number, true, false or null; or a tag
                key_limit, value_limit = tap.scalar(depth, value)
        self._depth, self._key, self._items = depth, key, items
        self._limits = (key_limit, value_limit)
        events.clear()

    def _start_run(self) -> None:
        if self._count >= self.max_runs:
            if self.label is not None:  # one run given whole (parse_run): a second one is not JSON
                raise RunError(400, f"invalid JSON in {self.label}: more than one value")
            raise RunError(413, f"batch has more than {self.max_runs} runs", self._count)
        self._run = Run(self._count)
        self._count += 1
        self._keys = set()

    def _finish_run(self) -> None:
        try:
            check_required(self._run, self.required)
        except FieldError as e:
            raise self._error(str(e)) from None
        self._closed, self._run = self._run, None

    def _too_deep(self) -> RunError:
        if self._run is None:
            return RunError(400, f"body nested deeper than {self.max_depth} levels")
        return self._error(f"nested deeper than {self.max_depth} levels")

    def _name(self, index: int) -> str:
        return self.label or f"{self.noun} {index}"

    def _error(self, reason: str) -> RunError:
        return RunError(400, f"{self._name(self._run.index)}: {reason}", self._run.index)
