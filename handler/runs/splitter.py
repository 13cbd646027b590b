"""Split a streamed JSON array of runs into runs, each kept as the exact bytes the client sent.

ijson's push parser (yajl2 C backend) reads every byte of the body: it checks the grammar and
reports the top-level fields of each run, checked by the rules in schema.py. To learn where a run ends
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

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from handler.base.errors import RunError
from handler.runs.events import RunEvents
from handler.runs.jsonbytes import clean_cut, has_lone_surrogate, string_end
from handler.runs.longstrings import LongStrings
from handler.runs.schema import REQUIRED, Run

# A string's bytes from a clean point to its closing quote (escapes taken whole).
LONG_STRING_BYTES = 1 << 20
_WHITESPACE = b" \t\r\n"
_SEPARATORS = _WHITESPACE + b",[]"
_OPEN_BRACE, _BACKSLASH = ord("{"), ord("\\")


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
    from handler.runs.fastpath import splitter  # it builds on RunSplitter

    runs_of = splitter(max_run_bytes, 1, max_depth, required, label, new_id)
    runs = [*runs_of.feed(b"["), *runs_of.feed(body), *runs_of.feed(b"]"), *runs_of.close()]
    if len(runs) != 1:  # "[]" or only whitespace: an empty body
        raise RunError(400, f"{label} must be a JSON object")
    return runs[0]


class RunSplitter(LongStrings, RunEvents):
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
        RunEvents.__init__(self, max_runs, max_depth, required, label, noun)
        self._init_long(long_string_bytes)
        self.max_run_bytes = max_run_bytes
        self.new_id = new_id  # the id given to a run that has none; None leaves it without
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
        # Bytes of the run being received (and the separators before it).
        self._pending = bytearray()
        # Input not yet given to ijson, and how much to gather before giving it (see the top).
        self._unfed = bytearray()
        self._hold = 0
        self._stopped_at = 0  # where feed_to_run_end stopped

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

    def feed_to_run_end(self, chunk: bytes) -> tuple[list[Run | RunPart], int]:
        """Like feed, but when nothing is held back it stops just after the first run that ends in
        ``chunk``; returns what feed would and how much of ``chunk`` was read. The rest is for the
        fast path (fastpath.py), or for ``feed_rest``: read in the same go, as feed would."""
        if self._long or self._unfed or self._hold or self._in_long_string():
            return self.feed(chunk), len(chunk)
        events_before = self._event_count
        runs = self._feed_pieces(chunk, stop_after_run=True)
        quiet = self._event_count == events_before and not self._long
        self._hold = 2 * max(self._hold, len(chunk)) if quiet else 0
        return runs, self._stopped_at

    def _feed_pieces(self, chunk: bytes, stop_after_run: bool = False) -> list[Run | RunPart]:
        if b"\x0b" in chunk or b"\x0c" in chunk:
            # yajl takes these as whitespace; JSON does not, and inside a string they are invalid.
            index = self._run.index if self._run else None
            raise RunError(400, "invalid JSON: vertical tab or form feed outside a string escape", index)
        runs: list[Run | RunPart] = []
        pos = 0
        while pos < len(chunk):
            if self._in_string:
                quote = string_end(chunk, pos)
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
            if stop_after_run and runs and isinstance(runs[-1], Run):
                break
        self._stopped_at = pos
        return runs

    def resume(self, count: int, prefix: bytes) -> None:
        """Stand where ``count`` runs of the array have been read and yajl has just read what
        ``prefix`` ends with: ``[`` (the array's start), ``[{}`` (a run) or ``[{},`` (a run and its
        comma). Where the fast path (fastpath.py) hands a body over."""
        self._parser.send(prefix)
        self._events.clear()
        self._seen_array, self._depth, self._count = True, 1, count

    def clean_between_runs(self) -> bool:
        """Whether nothing is open or held: no run, no held input, no long string, no error; the
        fast path may take the body back here (fastpath.py)."""
        return (
            self._run is None
            and self._closed is None
            and not self._pending
            and not self._unfed
            and not self._hold
            and not self._long
            and not self._in_string
            and not self._ended
            and self._seen_array
            and self._events is not None
        )

    def feed_rest(self, rest: bytes) -> list[Run | RunPart]:
        """The rest of the chunk in which the last run ended: read in the same go as that run,
        which reported events (so nothing is held back)."""
        return self._feed_pieces(rest)

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
            head = clean_cut(pending, size, self._scanned)
            if head is None:
                self._scanned = max(len(pending) - 12, 0)
                return []
            self._head = head
        end = clean_cut(pending, self._head + size, self._scanned)
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
        if has_lone_surrogate(data):
            raise RunError(400, f"{self._name(run.index)}: a \\u escape is an unpaired surrogate", run.index)

    def _too_large(self, index: int) -> RunError:
        return RunError(413, f"{self._name(index)} is larger than {self.max_run_bytes} bytes", index)
