"""Split a streamed JSON array of runs into runs, each kept as the exact bytes the client sent.

ijson's push parser (yajl2 C backend) reads every byte of the body: it checks the grammar and
reports the top-level fields of each run, which are validated here. To learn where a run ends
without a second parser, each chunk is fed to ijson in pieces that end at a ``}``: when ijson
reports the end of a run after such a piece, that brace closed it. The run is then stored byte
for byte as sent -- big integers, ``0.1``, ``1e400``, escapes, key order and whitespace intact.

Only the run being received is buffered; bytes between runs are dropped as soon as they are read.
With ``part_bytes``, a run that outgrows twice that is not held whole either: its bytes past the
first part are handed out (RunPart) as they are parsed, for the caller to upload while the rest
arrives.

A long string is not held by yajl either. Once yajl has gone ``long_string_bytes`` without an
event and the bytes since its last event prove it is inside a string (a quote, or more than a
literal's worth of bytes that cannot be outside one), the string's bytes from the next clean point
(no escape, surrogate pair or UTF-8 character cut) on are checked here instead, piece by piece, by
the same rules (a separate yajl parse of each piece, exact for escapes, control characters, UTF-8
and surrogates), and yajl is given a short stand-in (a digest of what it did not see) before the
closing quote. The run's bytes themselves are kept and handed out exactly as before.

yajl re-reads a token that spans chunks from its start on every chunk, so a 50 MB string fed in
64 KB chunks costs quadratic time. When a feed yields no event at all (the parser is inside one long
token), input is held back until it has doubled, which keeps the total work linear. For the same
reason a string is never cut at the ``}`` inside it (JSON kept as a string has one every few
bytes): once a piece ending in ``}`` yields no event, that brace was inside a string, and the next
piece runs to the string's closing quote.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import ijson

from handler.errors import RunError

# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one (and not itself an escaped backslash
# followed by "u"). yajl turns such a lone surrogate into "?", so it must be caught on the bytes.
# Found by its literal "\u" prefix (a fast scan), then checked: the backslash is not itself escaped
# (an even run of backslashes before it) and no low half follows.
_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW_SURROGATE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
# Where a large run may be cut into parts (at the end of a match) so that no escape sequence and
# no surrogate pair straddles the cut: after 12 bytes without a backslash (a pair's escapes are 12
# bytes), or just before an escape that is not the low half of a pair (text that is all escapes,
# as json.dumps writes non-ASCII, has one every 6 bytes; JSON kept as a string a \" every few). A
# backslash after anything but a backslash starts an escape.
_CUT = re.compile(rb"[^\\]{12}|[^\\](?=\\(?:[^u]|u(?:[^dD]|[dD][^c-fC-F])))")
# A clean point inside a string, where its bytes may be checked apart (at the end of a match): after
# 12 bytes without a backslash and before a byte that starts a UTF-8 character, or before an escape
# (a backslash after anything but a backslash) that is not the low half of a surrogate pair.
_CLEAN = re.compile(rb"[^\\]{12}(?=[^\x80-\xbf])|[^\\](?=\\(?:[^u]|u(?:[^dD]|[dD][^c-fC-F])))")
# Bytes that may come outside a string without any parser event: whitespace, separators, a number.
_EVENTLESS = b" \t\r\n,:0123456789+-.eE"
_CONTROL = bytes(range(0x20))
# A string's bytes from a clean point to its closing quote (escapes taken whole).
LONG_STRING_BYTES = 1 << 20
_WHITESPACE = b" \t\r\n"
_SEPARATORS = _WHITESPACE + b",[]"
_OPEN_BRACE, _BACKSLASH = ord("{"), ord("\\")
MAX_NAME_CHARS = 1024
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_DOTTED_ORDER_CHARS = 8192
RUN_TYPES = frozenset({"tool", "chain", "llm", "retriever", "embedding", "prompt", "parser"})
_OBJECT_FIELDS = frozenset({"inputs", "outputs", "metadata", "extra", "serialized"})
_ARRAY_FIELDS = frozenset({"events", "tags"})
# The first event each item of an array field may have.
_ITEM_EVENTS = {"tags": frozenset({"string"}), "events": frozenset({"start_map"})}
_ITEM_ERRORS = {"tags": "tags must be an array of strings", "events": "events must be an array of objects"}
# Optional scalar fields kept in PostgreSQL columns, so runs can be listed without their payloads.
_UUID_FIELDS = frozenset({"parent_run_id", "session_id", "reference_example_id"})
_TIME_FIELDS = frozenset({"start_time", "end_time"})
_TEXT_FIELDS = {"session_name": MAX_NAME_CHARS, "dotted_order": MAX_DOTTED_ORDER_CHARS}
REQUIRED = ("trace_id", "name")
# How much of a run's error text its row keeps (the whole text stays in the run's bytes).
ERROR_PREVIEW_CHARS = 2000
# A time given as a number is milliseconds since the Unix epoch (what the JavaScript SDK sends:
# Date.now()), from 0 up to, not including, the year 10000 (datetime's range).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_MILLIS_LIMIT = 253_402_300_800_000  # 10000-01-01T00:00:00Z


def epoch_millis(value: int | float | Decimal) -> datetime:
    """The UTC instant ``value`` milliseconds after the Unix epoch, to the microsecond (a fraction
    below that is rounded half to even). ijson gives a JSON number as an int or a Decimal, so
    ``1796174206269.5`` is exact and ``1e400`` is a Decimal, not an infinity. Raises ValueError,
    with the reason, for a number that is negative, not finite or not before the year 10000."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    number = Decimal(value) if isinstance(value, float) else value
    if isinstance(number, Decimal) and not number.is_finite():
        raise ValueError("must be a finite number of milliseconds")
    if number < 0:
        raise ValueError("must not be a negative number of milliseconds")
    too_late = f"must be less than {EPOCH_MILLIS_LIMIT} milliseconds (the year 10000)"
    if number >= EPOCH_MILLIS_LIMIT:  # checked before scaling: 1e400 is no integer to build
        raise ValueError(too_late)
    micros = number * 1000
    if isinstance(micros, Decimal):
        micros = int(micros.to_integral_value(ROUND_HALF_EVEN))
    if micros >= EPOCH_MILLIS_LIMIT * 1000:  # rounded up to the limit
        raise ValueError(too_late)
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(slots=True)
class Run:
    """One run: its fields as parsed, and its bytes once complete."""

    index: int
    id: uuid.UUID | None = None
    trace_id: uuid.UUID | None = None
    name: str | None = None
    run_type: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    dotted_order: str | None = None
    session_name: str | None = None
    session_id: uuid.UUID | None = None
    reference_example_id: uuid.UUID | None = None
    has_error: bool = False
    error: str | None = None  # its first ERROR_PREVIEW_CHARS characters, for listings
    # The splitter put ``{"id":"<id>",`` before the bytes the client sent (the run came without an
    # id); without it, ``head`` + parts + ``body`` are exactly the client's bytes.
    id_added: bool = False
    # What GET will return: ``body``; or, for a run handed out in parts (RunPart) while it arrived,
    # ``head`` + the parts + ``body``.
    body: bytes = b""
    head: bytes = b""
    parts: int = 0  # RunParts handed out
    size: int = 0  # bytes in all

    @property
    def status(self) -> str:
        if self.has_error:
            return "error"
        return "success" if self.end_time is not None else "pending"


@dataclass
class RunPart:
    """Bytes from the middle of a run too large to hold, handed out while the run still arrives.
    ``run`` is the run they belong to, complete once the splitter returns it."""

    run: Run
    data: bytes


def parse_run(
    body: bytes,
    max_run_bytes: int,
    max_depth: int,
    label: str,
    required: tuple[str, ...] = REQUIRED,
    new_id: Callable[[], uuid.UUID] | None = None,
) -> Run:
    """One run given whole (a multipart part, a PATCH body, a patched run), checked exactly like a
    run in a streamed batch; errors name it by ``label``."""
    splitter = RunSplitter(max_run_bytes, 1, max_depth, required, label, new_id)
    runs = [*splitter.feed(b"["), *splitter.feed(body), *splitter.feed(b"]"), *splitter.close()]
    if len(runs) != 1:  # "[]" or only whitespace: an empty body
        raise RunError(400, f"{label} must be a JSON object")
    return runs[0]


def _first_line(error: Exception) -> str:
    """yajl's message without its multi-line excerpt of the input (which may be bytes)."""
    message = error.args[0] if error.args else str(error)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return message.splitlines()[0] if message else "invalid JSON"


def _has_lone_surrogate(data: bytes | bytearray) -> bool:
    # find() of one byte is a memchr: data without any escape skips the slower searches.
    if data.find(b"\\") < 0 or (b"\\ud" not in data and b"\\uD" not in data):
        return False
    for high in _HIGH_SURROGATE.finditer(data):
        start = before = high.start()
        while before and data[before - 1] == _BACKSLASH:
            before -= 1
        if (start - before) % 2 == 0 and _LOW_SURROGATE.match(data, high.end()) is None:
            return True
    return False


def _string_end(chunk: bytes, pos: int) -> int | None:
    """Just past the first closing quote of a string at or after ``pos``: a quote after an even
    run of backslashes that starts at ``pos`` or later. Each quote is found by find() (a memchr)
    and its backslashes counted, where a regex with a lookbehind was tried at every byte."""
    quote = chunk.find(b'"', pos)
    while quote >= 0:
        start = quote
        while start > pos and chunk[start - 1] == _BACKSLASH:
            start -= 1
        if (quote - start) % 2 == 0 and (start == 0 or chunk[start - 1] != _BACKSLASH):
            return quote + 1
        quote = chunk.find(b'"', quote + 1)
    return None


def _clean_cut(data: bytearray, low: int, scanned: int) -> int | None:
    """A position at or after ``low`` where ``data`` may be cut (see _CUT), or None. No cut ends
    before ``scanned`` + 12 (an earlier search found none there)."""
    start = max(low - 12, scanned)
    while (found := _CUT.search(data, start)) is not None and found.end() < low:
        start = found.start() + 1
    return found.end() if found else None


def check_json_value(data: bytes, label: str, index: int | None = None) -> None:
    """``data`` is exactly one JSON value, held to the rules of a run's bytes (a payload part that
    is joined into a run: alone, it must not be able to add fields or end the object early)."""
    if b"\x0b" in data or b"\x0c" in data:
        raise RunError(
            400, f"{label}: invalid JSON: vertical tab or form feed outside a string escape", index
        )
    if _has_lone_surrogate(data):
        raise RunError(400, f"{label}: a \\u escape is an unpaired surrogate", index)
    try:
        for _ in ijson.basic_parse(data):
            pass
    except (ijson.JSONError, ValueError, ArithmeticError, SystemError) as e:
        message = _first_line(e) if isinstance(e, ijson.JSONError) else "invalid UTF-8 or number"
        raise RunError(400, f"{label}: invalid JSON: {message}", index) from None


class RunSplitter:
    """Feed it the body's chunks in order; it returns the runs completed by each chunk."""

    def __init__(
        self,
        max_run_bytes: int,
        max_runs: int,
        max_depth: int = 512,
        required: tuple[str, ...] = REQUIRED,
        label: str | None = None,
        new_id: Callable[[], uuid.UUID] | None = uuid.uuid4,
        noun: str = "run",
        nested: bool = False,
        part_bytes: int = 0,
        long_string_bytes: int = LONG_STRING_BYTES,
    ) -> None:
        self.max_run_bytes = max_run_bytes
        self.max_runs = max_runs
        self.required = required
        self.label = label  # what errors call the run, when not "run <index>"
        self.new_id = new_id  # the id given to a run that has none; None leaves it without
        self.noun = noun  # errors say "<noun> <index>"
        # The array is a value inside a larger document: where it ends, the input after it is
        # kept in ``rest`` (for the caller to read) instead of being refused as trailing data.
        self.nested = nested
        self.rest: bytes | None = None
        # A run that grows past twice this is handed out in parts of at least this many bytes
        # (RunPart) while it arrives; only its first part, the head, stays until it ends. 0 holds
        # every run whole.
        self.part_bytes = part_bytes
        self._in_string = False  # the parser is inside a string: cut at its end, not at braces
        self._head = 0  # the open run's head length, once it is being handed out in parts
        self._scanned = 0  # where the search for a clean cut may start (see _spill)
        self._spilled = 0  # bytes of the open run handed out
        self._parts = 0
        # A string this long is checked here, not buffered by yajl (see the top); 0 never.
        self.long_string_bytes = long_string_bytes
        self._quiet = 0  # bytes given to yajl since its last event: about what it holds
        self._quiet_quote = False  # a quote among them
        self._quiet_other = 0  # bytes among them that are not _EVENTLESS (counted up to 5)
        self._long = False  # inside a long string, checking it here
        self._long_rest = b""  # its bytes after the last clean point, not yet checked
        self._long_digest = hashlib.blake2b(digest_size=8)
        # Counted from the top-level array: a run's own fields are at depth 2.
        self.max_depth = max_depth
        self._events = ijson.sendable_list()
        # basic_parse: events without prefixes, which cost ijson a string per event.
        self._parser = ijson.basic_parse_coro(self._events)
        # Validator state.
        self._seen_array = False
        self._ended = False  # the array has closed: only whitespace may follow
        self._run: Run | None = None  # the run being received
        self._closed: Run | None = None  # the run the last piece closed
        self._keys: set[str] = set()
        self._key: str | None = None  # a run's field whose value comes next
        self._items: str | None = None  # the array field (tags, events) whose items come next
        self._depth = 0  # 1 inside the array, 2 inside a run
        self._count = 0
        self._event_count = 0
        # Bytes of the run being received (and the separators before it).
        self._pending = bytearray()
        # Input not yet given to ijson, and how much to gather before giving it (see the top).
        self._unfed = bytearray()
        self._hold = 0

    @property
    def buffered(self) -> int:
        """Bytes held: the run being received, input held back, and what yajl holds."""
        return len(self._pending) + len(self._unfed) + self._quiet + len(self._long_rest)

    def feed(self, chunk: bytes) -> list[Run | RunPart]:
        if self._long:
            return self._feed_long(chunk)
        if self._unfed or self._hold:
            self._unfed += chunk
            # Never hold back more than could still belong to the run being received: beyond
            # that, parsing must say where the run ends before the size limit is judged.
            held = len(self._pending) + self._spilled + len(self._unfed)
            if len(self._unfed) < self._hold and held <= self.max_run_bytes:
                return []
            chunk = bytes(self._unfed)
            self._unfed.clear()
        events_before = self._event_count
        runs = self._enter_long(chunk) if self._in_long_string() else self._feed_pieces(chunk)
        quiet = self._event_count == events_before and not self._long
        self._hold = 2 * max(self._hold, len(chunk)) if quiet else 0
        return runs

    def _feed_pieces(self, chunk: bytes) -> list[Run | RunPart]:
        if b"\x0b" in chunk or b"\x0c" in chunk:
            # yajl takes these as whitespace; JSON does not, and inside a string they are invalid.
            index = self._run.index if self._run else None
            raise RunError(400, "invalid JSON: vertical tab or form feed outside a string escape", index)
        runs: list[Run | RunPart] = []
        pos = 0
        while pos < len(chunk):
            if self._in_string:
                quote = _string_end(chunk, pos)
                end = len(chunk) if quote is None else quote
            else:
                brace = chunk.find(b"}", pos)
                end = len(chunk) if brace < 0 else brace + 1
            events_before = self._event_count
            piece = chunk[pos:end]
            runs.extend(self._feed_piece(piece))
            if self._event_count == events_before:
                self._note_quiet(piece)
            else:
                self._quiet, self._quiet_quote, self._quiet_other = 0, False, 0
            if self._in_string:
                # Still inside only if no quote came; after a backslash, whether the next quote
                # ends the string depends on what came before: cut at braces again.
                self._in_string = quote is None and chunk[end - 1] != _BACKSLASH
            else:
                # A "}" that yields no event is inside a string (a closing brace is an event).
                self._in_string = brace >= 0 and self._event_count == events_before
            pos = end
            if self.rest is not None:  # a nested array ended in that piece
                self.rest += chunk[pos:]
                break
        return runs

    def _note_quiet(self, piece: bytes) -> None:
        self._quiet += len(piece)
        if not self._quiet_quote:
            if b'"' in piece:
                self._quiet_quote = True
            elif self._quiet_other < 5:
                self._quiet_other += len(piece.translate(None, _EVENTLESS))

    # -- long strings (see the top) -------------------------------------------------------------

    def _in_long_string(self) -> bool:
        """Whether yajl is known to be inside a string it has held for long_string_bytes.

        Between two events yajl completes no token. Outside a string it can only take whitespace,
        separators, a number and the start of a literal (at most 4 letters) without one; and a
        quote would start a string that cannot have ended. So a quote, or more than 4 other bytes,
        among the bytes since the last event mean yajl is inside a string."""
        return (
            0 < self.long_string_bytes <= self._quiet
            and (self._quiet_quote or self._quiet_other > 4)
            and self._run is not None
            and self._closed is None
            and self._events is not None
        )

    def _enter_long(self, chunk: bytes) -> list[Run | RunPart]:
        """yajl is inside a long string: give it the string's bytes up to the chunk's first clean
        point, and check the rest here."""
        clean = _CLEAN.search(chunk)
        if clean is None:
            return self._feed_pieces(chunk)
        events_before = self._event_count
        runs = self._feed_pieces(chunk[: clean.end()])
        if self._event_count != events_before or not self._in_long_string():
            # The string ended before that point (an event): no long string after all.
            return runs + self._feed_pieces(chunk[clean.end() :])
        self._long, self._long_rest = True, b""
        self._long_digest = hashlib.blake2b(digest_size=8)
        return runs + self._feed_long(chunk[clean.end() :])

    def _feed_long(self, chunk: bytes) -> list[Run | RunPart]:
        """Bytes of a long string (and, once it ends, what follows it)."""
        if b"\x0b" in chunk or b"\x0c" in chunk:
            raise RunError(
                400, "invalid JSON: vertical tab or form feed outside a string escape", self._run.index
            )
        rest = self._long_rest
        data = rest + chunk if rest else chunk
        end = _string_end(data, 0)  # from a clean point: no escape is cut before it
        if end is None:
            clean = None
            for clean in _CLEAN.finditer(data, max(0, len(data) - 64)):  # noqa: B007 (the last)
                pass
            if clean is None:  # no clean point near the end (a run of backslashes): yajl takes over
                self._long, self._long_rest = False, b""
                if rest:  # (an empty send would end yajl's input)
                    self._parse(rest, last=False)
                    self._note_quiet(rest)
                self._in_string = True
                return self._feed_pieces(chunk)
            self._check_string(data[: clean.end()])
            self._long_rest = data[clean.end() :]
            return self._take_bytes(chunk)
        self._check_string(data[: end - 1])
        self._long, self._long_rest, self._in_string = False, b"", False
        runs = self._take_bytes(chunk[: end - len(rest)])
        # The stand-in: what yajl did not see, as a digest, so that two long keys still differ;
        # after a "z", so that a \u escape cut short before the clean point is not completed.
        self._parse(b"z" + self._long_digest.hexdigest().encode() + b'"', last=False)
        self._quiet, self._quiet_quote, self._quiet_other = 0, False, 0
        return runs + self._feed_pieces(chunk[end - len(rest) :])

    def _check_string(self, content: bytes) -> None:
        """Bytes from inside a string, between clean points: valid as yajl and ijson have it."""
        if not content:
            return
        self._long_digest.update(content)
        if content.isascii() and b"\\" not in content:
            if len(content.translate(None, _CONTROL)) == len(content):
                return
        try:
            for _ in ijson.basic_parse(b'"' + content + b'"'):
                pass
        except (ijson.JSONError, ValueError, ArithmeticError, SystemError) as e:
            raise self._invalid(e) from None

    def _take_bytes(self, data: bytes) -> list[RunPart]:
        """Bytes of the run that yajl is not given."""
        self._pending += data
        if len(self._pending) + self._spilled > self.max_run_bytes:
            raise self._too_large(self._run.index)
        return self._spill() if self.part_bytes else []

    def close(self) -> list[Run | RunPart]:
        """Signal the end of the body and return the runs still held back.

        Raises if the body was not one complete array of runs (nested: if the array has not
        ended; what follows it is in ``rest``).
        """
        runs = self._feed_pieces(bytes(self._unfed))
        self._unfed.clear()
        self._parse(b"", last=True)
        if not self._seen_array:
            raise RunError(400, "body must be a JSON array of runs")
        return runs

    # -- grammar and fields (ijson) -----------------------------------------------------------

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
            message = _first_line(e)
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
        for event, value in events:
            if key is not None:  # the first event of a run's top-level field
                self._check_field(key, event, value)
                if event == "start_map" or event == "start_array":
                    depth += 1  # 3, below any sensible max_depth
                    if key in _ITEM_EVENTS:
                        items = key
                key = None
            elif event == "map_key":
                if depth == 2:
                    if value in self._keys:
                        raise self._error(f"duplicate key {value!r}")
                    self._keys.add(value)
                    key = value
            elif event == "string" and depth > 2 and items is None:
                pass  # the bulk of a payload: a string inside a field has nothing to check
            elif event == "start_map":
                depth += 1
                if depth > self.max_depth:
                    raise self._too_deep()
                if depth == 4 and items is not None and event not in _ITEM_EVENTS[items]:
                    raise self._error(_ITEM_ERRORS[items])
                if depth == 2:
                    self._start_run()
                elif depth == 1:
                    raise RunError(400, "body must be a JSON array of runs")
            elif event == "end_map":
                depth -= 1
                if depth == 1:
                    self._finish_run()
            elif event == "start_array":
                depth += 1
                if depth > self.max_depth:
                    raise self._too_deep()
                if depth == 4 and items is not None:
                    raise self._error(_ITEM_ERRORS[items])
                if depth == 1:
                    self._seen_array = True
                elif depth == 2:
                    raise RunError(400, f"run {self._count} must be an object, got array", self._count)
            elif event == "end_array":
                depth -= 1
                if depth == 2:
                    items = None
                elif depth == 0:
                    self._ended = True
            elif depth < 2:  # a scalar outside any run
                if depth == 0:
                    raise RunError(400, "body must be a JSON array of runs")
                raise RunError(400, f"run {self._count} must be an object, got {event}", self._count)
            elif items is not None and depth == 3 and event not in _ITEM_EVENTS[items]:
                raise self._error(_ITEM_ERRORS[items])
        self._depth, self._key, self._items = depth, key, items
        events.clear()

    def _start_run(self) -> None:
        if self._count >= self.max_runs:
            if self.label is not None:  # one run given whole (parse_run): a second one is not JSON
                raise RunError(400, f"invalid JSON in {self.label}: more than one value")
            raise RunError(413, f"batch has more than {self.max_runs} runs", self._count)
        self._run = Run(self._count)
        self._count += 1
        self._keys = set()

    def _check_field(self, key: str, event: str, value: object) -> None:
        run = self._run
        if event == "null" and key != "id":  # null is the same as absent, for all but the id
            if key in self.required:
                raise self._error(f"{key} is required")
            return
        if key == "id" or key == "trace_id":
            if event != "string" or not UUID_TEXT.fullmatch(value):
                raise self._error(f"{key} must be a UUID string")
            setattr(run, key, uuid.UUID(value))
        elif key == "name":
            if event != "string":
                raise self._error("name must be a string")
            run.name = self._text(key, value, MAX_NAME_CHARS)
        elif key in _OBJECT_FIELDS:
            if event != "start_map":
                raise self._error(f"{key} must be an object")
        elif key in _ARRAY_FIELDS:
            if event != "start_array":
                raise self._error(f"{key} must be an array")
        elif key == "error":
            if event != "string":
                raise self._error("error must be a string")
            run.has_error = True
            # A lone surrogate or a NUL cannot be stored as text (the run's bytes keep them)
            run.error = value[:ERROR_PREVIEW_CHARS].encode("utf-8", "replace").decode().replace("\x00", "")
        elif key in _UUID_FIELDS:
            if event != "string" or not UUID_TEXT.fullmatch(value):
                raise self._error(f"{key} must be a UUID string")
            setattr(run, key, uuid.UUID(value))
        elif key in _TIME_FIELDS:
            setattr(run, key, self._time(key, event, value))
        elif key in _TEXT_FIELDS:
            if event != "string":
                raise self._error(f"{key} must be a string")
            setattr(run, key, self._text(key, value, _TEXT_FIELDS[key]))
        elif key == "run_type":
            if event != "string" or value not in RUN_TYPES:
                raise self._error(f"run_type must be one of {', '.join(sorted(RUN_TYPES))}")
            run.run_type = value

    def _text(self, key: str, value: str, max_chars: int) -> str:
        if "\x00" in value:
            raise self._error(f"{key} must not contain NUL characters")
        if len(value) > max_chars:
            raise self._error(f"{key} is longer than {max_chars} characters")
        return value

    def _time(self, key: str, event: str, value: object) -> datetime:
        if event == "number":
            try:
                return epoch_millis(value)
            except ValueError as e:
                raise self._error(f"{key} {e}") from None
        try:
            if event != "string":
                raise ValueError
            moment = datetime.fromisoformat(value)
            # In UTC: PostgreSQL takes offsets up to 15:59 only, RFC 3339 up to 23:59.
            return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise self._error(
                f"{key} must be an ISO 8601 date-time string or a number of milliseconds since the Unix epoch"
            ) from None

    def _finish_run(self) -> None:
        run = self._run
        for field in self.required:
            if getattr(run, field) is None:
                raise self._error(f"{field} is required")
        self._closed = run
        self._run = None

    def _too_deep(self) -> RunError:
        if self._run is None:
            return RunError(400, f"body nested deeper than {self.max_depth} levels")
        return self._error(f"nested deeper than {self.max_depth} levels")

    def _name(self, index: int) -> str:
        return self.label or f"{self.noun} {index}"

    def _error(self, reason: str) -> RunError:
        return RunError(400, f"{self._name(self._run.index)}: {reason}", self._run.index)

    # -- run boundaries and bytes --------------------------------------------------------------

    def _feed_piece(self, piece: bytes) -> list[Run | RunPart]:
        was_ended = self._ended
        run_start = piece
        if not self._pending and not was_ended:
            # Between runs only separators may come before a run's "{". Anything else is an
            # error, found here rather than once ijson has buffered the whole token.
            rest = piece.lstrip(_SEPARATORS)
            closes_array = b"]" in piece[: len(piece) - len(rest)]  # what follows is trailing data
            if closes_array and self.nested:
                end = piece.index(b"]") + 1
                piece, self.rest = piece[:end], piece[end:]
            elif rest and rest[0] != _OPEN_BRACE and not closes_array:
                if not self._seen_array and not piece.lstrip(_WHITESPACE).startswith(b"["):
                    raise RunError(400, "invalid JSON in body: the body must be a JSON array of runs")
                index = self._count
                name = self._name(index)
                raise RunError(400, f"invalid JSON in {name}: {name} must be an object", index)
            run_start = rest
        self._parse(piece, last=False)
        if self._ended and not self.nested:
            # yajl reports complete values after the array, not a string or number left open.
            trailing = piece if was_ended else piece[piece.index(b"]") + 1 :]
            if trailing.strip(_WHITESPACE):
                raise RunError(400, "invalid JSON in body: data after the array")
            return []
        if self._closed is None and self._run is None:
            return []  # only separators since the last run
        # When the run starts in this piece, it starts at run_start's "{": only whitespace,
        # commas and "[" come before it, and they are not part of the run.
        self._pending += piece if self._pending else run_start
        if len(self._pending) + self._spilled > self.max_run_bytes:
            index = self._run.index if self._closed is None else self._closed.index
            raise self._too_large(index)
        if self._closed is None:
            return self._spill() if self.part_bytes else []
        # The piece ends with the brace that closed the run.
        fields, self._closed = self._closed, None
        return [self._take(fields)]

    def _spill(self) -> list[RunPart]:
        """Hand out the open run's bytes past its head once there is a part's worth.

        No cut (the head's end, each part's end) splits an escape sequence or a surrogate pair
        (_CUT), so each piece is checked alone. The head
        is fixed at its first clean cut; until a part goes out, the run is still one piece."""
        pending, size = self._pending, self.part_bytes
        if len(pending) < (self._head or size) + size:
            return []
        if not self._head:
            head = _clean_cut(pending, size, self._scanned)
            if head is None:
                self._scanned = max(len(pending) - 12, 0)
                return []
            self._head = head
        end = _clean_cut(pending, self._head + size, self._scanned)
        if end is None:
            self._scanned = max(len(pending) - 12, 0)
            return []
        run = self._run
        if not self._parts and run.id is None and self.new_id is not None:
            run.id = self.new_id()  # for the object key; kept unless the run has its own id
        data = bytes(pending[self._head : end])
        del pending[self._head : end]
        self._scanned = self._head
        self._check_surrogates(data, run)
        self._spilled += len(data)
        self._parts += 1
        return [RunPart(run, data)]

    def _take(self, run: Run) -> Run:
        pending, head = self._pending, self._head
        pieces = (pending[:head], pending[head:]) if self._parts else (pending,)
        for piece in pieces:
            self._check_surrogates(piece, run)
        with memoryview(pieces[0]) as first:
            if "id" not in self._keys and self.new_id is not None:
                run.id = run.id or self.new_id()
                run.id_added = True
                start = b"".join((b'{"id":"', str(run.id).encode(), b'",', first[1:]))
            else:
                start = bytes(first)
        if self._parts:
            run.head, run.body = start, bytes(pieces[1])
        else:
            run.body = start
        run.parts, run.size = self._parts, len(run.head) + self._spilled + len(run.body)
        pending.clear()
        self._head = self._spilled = self._parts = self._scanned = 0
        return run

    def _check_surrogates(self, data: bytes | bytearray, run: Run) -> None:
        if _has_lone_surrogate(data):
            raise RunError(400, f"{self._name(run.index)}: a \\u escape is an unpaired surrogate", run.index)

    def _too_large(self, index: int) -> RunError:
        return RunError(413, f"{self._name(index)} is larger than {self.max_run_bytes} bytes", index)
