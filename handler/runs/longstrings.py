"""Long strings, checked here rather than buffered by yajl (see splitter.py's top).

A mixin of RunSplitter: it uses the splitter's feeding (``_feed_pieces``, ``_take_bytes``) and
the parser's (``_parse``, ``_invalid``), and keeps the state below.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import ijson

from handler.base.errors import RunError
from handler.runs.jsonbytes import string_end
from handler.runs.schema import Run

if TYPE_CHECKING:
    from handler.runs.splitter import RunPart

# A clean point inside a string, where its bytes may be checked apart (at the end of a match): after
# 12 bytes without a backslash and before a byte that starts a UTF-8 character, or before an escape
# (a backslash after anything but a backslash) that is not the low half of a surrogate pair.
_CLEAN = re.compile(rb"[^\\]{12}(?=[^\x80-\xbf])|[^\\](?=\\(?:[^u]|u(?:[^dD]|[dD][^c-fC-F])))")
# Bytes that may come outside a string without any parser event: whitespace, separators, a number.
_EVENTLESS = b" \t\r\n,:0123456789+-.eE"
_CONTROL = bytes(range(0x20))


class LongStrings:
    """Tracks how long yajl has gone without an event, and checks a long string's bytes itself."""

    def _init_long(self, long_string_bytes: int) -> None:
        # A string this long is checked here, not buffered by yajl; 0 never.
        self.long_string_bytes = long_string_bytes
        self._quiet = 0  # bytes given to yajl since its last event: about what it holds
        self._quiet_quote = False  # a quote among them
        self._quiet_other = 0  # bytes among them that are not _EVENTLESS (counted up to 5)
        self._long = False  # inside a long string, checking it here
        self._long_rest = b""  # its bytes after the last clean point, not yet checked
        self._long_digest = hashlib.blake2b(digest_size=8)

    def _note_quiet(self, piece: bytes) -> None:
        self._quiet += len(piece)
        if not self._quiet_quote:
            if b'"' in piece:
                self._quiet_quote = True
            elif self._quiet_other < 5:
                self._quiet_other += len(piece.translate(None, _EVENTLESS))

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
        end = string_end(data, 0)  # from a clean point: no escape is cut before it
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
