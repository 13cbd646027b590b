"""Checks on JSON text as bytes, where a parser's events would come too late or not at all:
lone surrogate escapes (yajl turns them into "?"), where a string ends, where a run may be cut into
parts without splitting an escape, and one whole value checked against a run's byte rules."""

from __future__ import annotations

import re

import ijson
import simdjson

from handler.base.errors import RunError

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
_BACKSLASH = ord("\\")
# simdjson takes an exponent of any length (1e-99999999999999999999 is 0.0); Python's Decimal,
# which ijson gives numbers as, refuses one beyond 10**18. simdjson itself refuses a long positive
# exponent after a mantissa that is not zero, so the ones it takes are negative ("e-") or follow a
# zero ("0e").
_LONG_EXPONENT = re.compile(rb"[0-9]{18}")
_ZERO_LONG_EXPONENT = re.compile(rb"0[eE][-+]?[0-9]{18}")
_BOM = b"\xef\xbb\xbf"  # simdjson skips one that starts its input; yajl refuses it
# The process's one simdjson parser (surely_valid's and the fast path's): its buffers grow to about
# 15 times the largest document it parsed (5 MB after a 330 KB run), so one is kept, not one per
# request or per use. A parse and every use of its document are synchronous, so no two share it.
PARSER = simdjson.Parser()


def first_line(error: Exception) -> str:
    """yajl's message without its multi-line excerpt of the input (which may be bytes)."""
    message = error.args[0] if error.args else str(error)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return message.splitlines()[0] if message else "invalid JSON"


def has_lone_surrogate(data: bytes | bytearray) -> bool:
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


def string_end(chunk: bytes, pos: int) -> int | None:
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


def clean_cut(data: bytearray, low: int, scanned: int) -> int | None:
    """A position at or after ``low`` where ``data`` may be cut (see _CUT), or None. No cut ends
    before ``scanned`` + 12 (an earlier search found none there)."""
    start = max(low - 12, scanned)
    while (found := _CUT.search(data, start)) is not None and found.end() < low:
        start = found.start() + 1
    return found.end() if found else None


def long_exponent(data: bytes) -> bool:
    """Whether ``data`` may hold a number whose exponent has 18 digits or more. Each "-" is found
    by find() (a memchr) and looked at, where a regex would be tried at every byte."""
    at = data.find(b"-")
    while at >= 0:
        if data[at - 1] in b"eE" and _LONG_EXPONENT.match(data, at + 1):
            return True
        at = data.find(b"-", at + 1)
    return _ZERO_LONG_EXPONENT.search(data) is not None


def surely_valid(data: bytes) -> bool:
    """Whether yajl surely takes ``data`` as one JSON value: simdjson takes it, in C and without
    building it, and it holds nothing simdjson takes and yajl or Decimal refuse (a leading byte
    order mark, a long exponent). False is no verdict: ijson is then to judge."""
    try:
        document = PARSER.parse(data)
    except (ValueError, RuntimeError):  # simdjson's errors, UnicodeDecodeError among them
        return False
    del document
    return not data.startswith(_BOM) and not long_exponent(data)


def check_json_value(data: bytes, label: str, index: int | None = None) -> None:
    """``data`` is exactly one JSON value, held to the rules of a run's bytes (a payload part that
    is joined into a run: alone, it must not be able to add fields or end the object early)."""
    if b"\x0b" in data or b"\x0c" in data:
        raise RunError(
            400, f"{label}: invalid JSON: vertical tab or form feed outside a string escape", index
        )
    if has_lone_surrogate(data):
        raise RunError(400, f"{label}: a \\u escape is an unpaired surrogate", index)
    if surely_valid(data):
        return
    message = ijson_error(data)
    if message is not None:
        raise RunError(400, f"{label}: invalid JSON: {message}", index)


def ijson_error(data: bytes) -> str | None:
    """What ijson says against ``data`` as one JSON value, or None when it takes it."""
    try:
        for _ in ijson.basic_parse(data):
            pass
    except (ijson.JSONError, ValueError, ArithmeticError, SystemError) as e:
        return first_line(e) if isinstance(e, ijson.JSONError) else "invalid UTF-8 or number"
    return None
