"""The splitter's fast path: runs found and checked in C, with yajl's splitter as the judge of the rest.

RunSplitter (splitter.py) gives every byte of the body to ijson, which turns every token into a
Python event: for a 100 KB field of short strings, about 2,000 events of which the splitter only
needs the first. Here a run's bytes are found by msgspec (``Raw`` skips a value in C and reports the
byte where trailing data starts) and checked by simdjson (the whole grammar, UTF-8, escapes and
surrogates), and only the run's top-level fields become Python values, checked by schema.py.

The fast path never judges a run it is not sure of: anything unusual -- a run either library
refuses, a field that breaks a rule, a run near a size limit, a number whose exponent has 18 digits
or more (simdjson and Python's Decimal differ there), more nesting than could be within max_depth,
a vertical tab or form feed, a chunk in which yajl might report no event -- hands the body over to
RunSplitter, which is given the same chunks, from the same state, as if it had read the body from
the start: what it accepts, refuses and says is RunSplitter's, byte for byte.

Why the hand-over is exact: RunSplitter's verdict depends on the chunks it is fed, not only on the
body (a chunk in which yajl reports no event makes it hold input back). The fast path keeps every
chunk since the end of the last run it handed out, and only runs while every chunk is surely
eventful for yajl (two real quotes, or a bracket between runs), so RunSplitter never held anything
back: a RunSplitter positioned after that run (``resume``), given the rest of that run's chunk as
it would have read it and then the chunks since, is in the state it would be in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import msgspec
import simdjson

from handler.query import extract
from handler.runs.jsonbytes import PARSER, long_exponent
from handler.runs.schema import REQUIRED, FieldError, Run, check_field, check_required, event_of
from handler.runs.splitter import LONG_STRING_BYTES, RunPart, RunSplitter
from handler.runs.tapwalk import Unsure, tap_field

# The largest run the fast path holds; larger ones are RunSplitter's (parts, long strings).
FAST_RUN_BYTES = 1 << 20
_WHITESPACE = b" \t\r\n"
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_SKIP = msgspec.json.Decoder(msgspec.Raw)
_TIMES = frozenset({"start_time", "end_time"})
# Where the fast path is between runs: before the array, after "[", after a run, after its ",".
_START, _FIRST, _AFTER, _NEXT, _RUN, _ENDED = range(6)
ENABLED = True  # FAST_SPLITTER (configure)
# After this many hand-overs in one body, RunSplitter keeps the rest of it: a body whose runs keep
# needing its judgement (say integers past 64 bits in every run) would otherwise pay for a failed
# try and a new RunSplitter per run. RunSplitter reading on is what it does between a hand-over and
# a take-back, so the verdicts stay its own.
_KEEP_SLOW_AFTER = 2


def configure(enabled: bool) -> None:
    """FAST_SPLITTER from Settings: 0 gives every body to RunSplitter, the path the fast one is
    checked against (to compare the two, or should the fast path ever be in doubt)."""
    global ENABLED
    ENABLED = enabled


def splitter(*args, **kwargs) -> FastSplitter | RunSplitter:
    """A splitter for a body, with RunSplitter's arguments: the fast one unless configured off."""
    return (FastSplitter if ENABLED else RunSplitter)(*args, **kwargs)


def _event(value: object) -> str | None:
    """The ijson event a top-level value starts with (schema.event_of, and simdjson's containers),
    or None for what the fast path does not judge."""
    if isinstance(value, simdjson.Object):
        return "start_map"
    if isinstance(value, simdjson.Array):
        return "start_array"
    try:
        return event_of(value)
    except FieldError:
        return None


def _count_to(data: bytes, byte: bytes, most: int) -> int:
    """How many times ``byte`` is in ``data``, counted by find() (a memchr) up to ``most``."""
    count, at = 0, data.find(byte)
    while at >= 0 and count < most:
        count += 1
        at = data.find(byte, at + 1)
    return count


def _two_quotes(chunk: bytes) -> bool:
    """Whether ``chunk`` has two quotes not right after a backslash: real quotes, one of which ends
    a string wherever the chunk starts."""
    found, at = 0, chunk.find(b'"')
    while at >= 0:
        if at == 0 or chunk[at - 1] != 0x5C:
            found += 1
            if found == 2:
                return True
        at = chunk.find(b'"', at + 1)
    return False


class FastSplitter:
    """RunSplitter's interface (feed, close, rest, buffered) and verdicts, at C speed for runs up to
    FAST_RUN_BYTES; see the top."""

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
        self._args = (max_run_bytes, max_runs, max_depth, required, label, new_id, noun, nested)
        self._kwargs = {"part_bytes": part_bytes, "long_string_bytes": long_string_bytes}
        self.max_runs, self.max_depth, self.required = max_runs, max_depth, required
        self.new_id, self.nested = new_id, nested
        # No run that RunSplitter would cut into parts, refuse as too large or read as a long string.
        limits = [FAST_RUN_BYTES, max_run_bytes]
        limits += [long_string_bytes - 1] if long_string_bytes else []
        limits += [2 * part_bytes - 1] if part_bytes else []
        self._run_limit = min(limits)
        self._slow: RunSplitter | None = None  # once it has taken over, everything goes there
        self._rest: bytes | None = None
        # The bytes since the clean point: the end of the last run handed out, the chunk edge where
        # the body was taken back, or the body's start. _starts: where each chunk since then starts
        # in _buf; bytes before the first are the rest of the chunk in which that run ended.
        # _resume: what RunSplitter.resume gives yajl to stand at the clean point (None: at the
        # body's start).
        self._buf = bytearray()
        self._starts: list[int] = []
        self._clean = 0
        self._resume: bytes | None = None
        self._pos = 0  # what is read of _buf
        self._state = _START
        self._count = 0  # runs handed out
        self._tried = 0  # bytes of the open run at the last try that found it unfinished
        self._last_size = 0  # the last run's size: the next one is tried once it has as many
        self._handovers = 0

    @property
    def rest(self) -> bytes | None:
        return self._slow.rest if self._slow is not None else self._rest

    @property
    def buffered(self) -> int:
        return self._slow.buffered if self._slow is not None else len(self._buf)

    def feed(self, chunk: bytes) -> list[Run | RunPart]:
        if self._slow is not None:
            if self._handovers >= _KEEP_SLOW_AFTER:
                return self._slow.feed(chunk)
            runs, used = self._slow.feed_to_run_end(chunk)
            if used < len(chunk):  # a run ended inside the chunk: the fast path takes the rest
                return runs + self._take_back_after_run(chunk[used:])
            self._take_back(chunk)
            return runs
        if not chunk:
            return []
        if b"\x0b" in chunk or b"\x0c" in chunk or not self._eventful(chunk):
            return self._hand_over(chunk)
        self._starts.append(len(self._buf))
        self._buf += chunk
        return self._read(last=False)

    def close(self) -> list[Run | RunPart]:
        if self._slow is not None:
            return self._slow.close()
        runs = self._read(last=True)
        if self._slow is None:
            if self._state == _ENDED:
                return runs
            runs += self._hand_over(None)
        return runs + self._slow.close()

    def _eventful(self, chunk: bytes) -> bool:
        """Whether yajl surely reports an event while reading ``chunk``: it has two quotes that
        are not escaped (one of them ends a string), or a bracket comes first between runs."""
        if _two_quotes(chunk):
            return True
        if self._state == _RUN or self._pos < len(self._buf):
            return False
        head = chunk.lstrip(_WHITESPACE + b",")
        return bool(head) and head[0] in b"[]{"

    # -- the fast path --------------------------------------------------------------------------

    def _read(self, last: bool) -> list[Run | RunPart]:
        """Read _buf from _pos: separators, runs, the array's end."""
        runs: list[Run | RunPart] = []
        buf = self._buf
        while True:
            pos = self._pos
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            self._pos = pos
            if pos == len(buf):
                break
            byte, state = buf[pos], self._state
            if state == _RUN or (byte == 0x7B and state in (_FIRST, _NEXT)):  # "{"
                self._state = _RUN
                run = self._try_run(last)
                if run is None:
                    break
                if run is False:
                    return runs + self._hand_over(None)
                runs.append(run)
            elif state == _START and byte == 0x5B:  # "["
                self._state, self._pos = _FIRST, pos + 1
            elif state == _AFTER and byte == 0x2C:  # ","
                self._state, self._pos = _NEXT, pos + 1
            elif byte == 0x5D and state in (_FIRST, _AFTER):  # "]"
                self._state, self._pos = _ENDED, pos + 1
                if self.nested:
                    self._rest = bytes(buf[pos + 1 :])
                    return runs
            else:
                return runs + self._hand_over(None)
        if self._resume is not None and self._clean:  # keep only what a hand-over would need
            cut = self._clean
            del buf[:cut]
            self._starts = [start - cut for start in self._starts if start >= cut]
            self._pos -= cut
            self._clean = 0
        return runs

    def _try_run(self, last: bool) -> Run | bool | None:
        """The run starting at _pos if it is complete and sure; None to wait for more bytes;
        False when it is not sure (RunSplitter is to judge)."""
        buf, start = self._buf, self._pos
        size = len(buf) - start
        # Each try reads the run from its start: the next one waits until the run has doubled
        # (linear in the run's size), and the first until it is as large as the last run was
        # (runs of a batch are often alike).
        if not last and size < max(2 * self._tried, min(self._last_size, self._run_limit)):
            return None
        try:
            with memoryview(buf) as view, view[start:] as data:
                _SKIP.decode(data)
            end = buf.rfind(b"}", start) + 1  # (whitespace may follow it)
        except msgspec.DecodeError as e:
            message = str(e)
            found = _TRAILING.search(message)
            if found is None:
                if message.startswith("Input data was truncated") and not last and size <= self._run_limit:
                    self._tried = size
                    return None
                return False
            # The byte counted is the first one after the value and the whitespace after it.
            end = buf.rfind(b"}", start, start + int(found.group(1)) - 1) + 1
        except RecursionError:  # msgspec's limit on nesting, far below what RunSplitter takes
            return False
        self._tried, self._last_size = 0, end - start
        run = self._check(bytes(buf[start:end]))
        if run is None:
            return False
        self._pos, self._state = end, _AFTER
        self._clean, self._resume = end, b"[{}"
        return run

    def _check(self, data: bytes) -> Run | None:
        """The run these bytes are, if RunSplitter would surely take them as they are; else None."""
        if len(data) > self._run_limit or self._count >= self.max_runs:
            return None
        try:
            document = PARSER.parse(data)
        except (ValueError, RuntimeError):  # simdjson's errors, UnicodeDecodeError among them
            return None
        try:
            # Looked at once simdjson has taken the run (a run it refuses costs no Python loop):
            # 1 (the array) + every opening bracket, counting those in strings, bounds the depth.
            brackets = _count_to(data, b"{", self.max_depth)
            if brackets + _count_to(data, b"[", self.max_depth - brackets) >= self.max_depth:
                return None
            if long_exponent(data):
                return None
            run = self._fields(document)
        finally:
            del document  # the parser is reused: no proxy may outlive this parse
        if run is None:
            return None
        self._count += 1
        if run.id is None and self.new_id is not None:
            run.id, run.id_added = self.new_id(), True
            data = b"".join((b'{"id":"', str(run.id).encode(), b'",', data[1:]))
        run.body, run.size = data, len(data)
        return run

    def _fields(self, document: object) -> Run | None:
        """The run's columns from its top-level fields, as schema.py checks ijson's first event of
        each; None if any breaks a rule (RunSplitter says how), repeats, or is not judged here."""
        if not isinstance(document, simdjson.Object):
            return None
        run, seen = Run(self._count), set()
        try:
            for key in document.keys():  # every key, repeated ones too; items() would copy values
                if key in seen or "\x00" in key:  # (pysimdjson looks a key up as a C string)
                    return None
                value = document[key]
                event = _event(value)
                if event is None:
                    return None
                if event == "number" and key in _TIMES and type(value) is not int:
                    return None  # ijson gives RunSplitter the exact Decimal, not a float
                seen.add(key)
                check_field(run, key, event, value, self.required)
                if key == "tags" and event == "start_array":
                    if not all(isinstance(tag, str) for tag in value):
                        return None
                elif key == "events" and event == "start_array":
                    if not all(isinstance(item, simdjson.Object) for item in value):
                        return None
                if key in extract.TAPPED and event in ("start_map", "start_array"):
                    tap_field(run, key, value)  # the query columns, as events.py gives them
            check_required(run, self.required)
        except (FieldError, ValueError, RuntimeError, LookupError, Unsure):
            return None
        return run

    # -- the hand-over --------------------------------------------------------------------------

    def _hand_over(self, chunk: bytes | None) -> list[Run | RunPart]:
        """RunSplitter takes the body from the clean point on, given the chunks as they came."""
        slow = self._slow = RunSplitter(*self._args, **self._kwargs)
        self._handovers += 1
        buf, clean = self._buf, self._clean
        starts = [start for start in self._starts if start >= clean]
        runs: list[Run | RunPart] = []
        if self._resume is not None:
            slow.resume(self._count, self._resume)
            rest = bytes(buf[clean : starts[0] if starts else len(buf)])
            if rest:  # the chunk that ended the last run, after it: yajl read it in the same go
                runs += slow.feed_rest(rest)
        for i, start in enumerate(starts):
            runs += slow.feed(bytes(buf[start : starts[i + 1] if i + 1 < len(starts) else len(buf)]))
        self._buf, self._starts = bytearray(), []
        if chunk is not None:
            runs += slow.feed(chunk)
        return runs

    def _take_back_after_run(self, rest: bytes) -> list[Run | RunPart]:
        """RunSplitter stopped just after a run, inside a chunk (feed_to_run_end): the fast path
        reads the chunk's rest, which a later hand-over gives back as ``feed_rest``."""
        slow = self._slow
        if not slow.clean_between_runs():
            return slow.feed_rest(rest)
        self._resume, self._state, self._count, self._slow = b"[{}", _AFTER, slow._count, None
        self._buf, self._starts, self._clean, self._pos, self._tried = bytearray(rest), [], 0, 0, 0
        return self._read(last=False)

    def _take_back(self, chunk: bytes) -> None:
        """After RunSplitter has read a chunk: if it stands between runs with nothing open or held,
        and the chunk ends in a run's "}", its "," or the array's "[" (whitespace aside), the fast
        path goes on from there, with a clean point that RunSplitter.resume reproduces."""
        slow = self._slow
        if self.nested and slow.rest is not None or not slow.clean_between_runs():
            return
        last = chunk.rstrip(_WHITESPACE)[-1:]
        if last == b"}":
            self._resume, self._state = b"[{}", _AFTER
        elif last == b",":
            self._resume, self._state = b"[{},", _NEXT
        elif last == b"[" and slow._count == 0:
            self._resume, self._state = b"[", _FIRST
        else:
            return
        self._count, self._slow = slow._count, None
        self._buf, self._starts, self._clean, self._pos, self._tried = bytearray(), [], 0, 0, 0
