"""Top-level fields of a stored JSON object, kept as raw text, and objects built from them.

Patching a run replaces some of its top-level fields: every other field keeps the exact bytes it
was sent with (big numbers, escapes, spacing inside the value), which a json.loads/dumps round
trip would not. Inputs are runs the splitter has already checked, so they are well-formed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from json.decoder import scanstring

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")

Fields = list[tuple[str, str]]


def object_fields(body: bytes) -> Fields:
    """The (key, raw value) pairs of a JSON object, in order."""
    text = body.decode()
    pos = _WS.match(text, _WS.match(text).end() + 1).end()  # past "{"
    fields: Fields = []
    while text[pos] != "}":
        key, pos = scanstring(text, pos + 1)
        start = _WS.match(text, _WS.match(text, pos).end() + 1).end()  # past ":"
        _, end = _DECODER.raw_decode(text, start)
        fields.append((key, text[start:end]))
        pos = _WS.match(text, end).end()
        if text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
    return fields


def build_object(fields: Iterable[tuple[str, str]]) -> bytes:
    members = (f"{json.dumps(key, ensure_ascii=False)}:{raw}" for key, raw in fields)
    return ("{" + ",".join(members) + "}").encode()


def merged(base: Fields, updates: Fields) -> bytes:
    """``base`` with each key of ``updates`` replaced where it is, or added at the end."""
    values = dict(base)
    values.update(updates)
    return build_object(values.items())
