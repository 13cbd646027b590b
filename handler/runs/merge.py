"""Top-level fields of a stored JSON object, kept as raw text, and objects built from them.

Patching a run replaces some of its top-level fields: every other field keeps the exact bytes it
was sent with (big numbers, escapes, spacing inside the value), which a json.loads/dumps round
trip would not. Inputs are runs the splitter has already checked, so they are well-formed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import msgspec

# A run's top-level keys are never repeated (the splitter refuses that), so a dict loses nothing.
_RAW_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])

Fields = list[tuple[str, str]]


def object_fields(body: bytes) -> Fields:
    """The (key, raw value) pairs of a JSON object, in order: msgspec finds where each value ends,
    in C, and ``Raw`` keeps its bytes as sent."""
    return [(key, bytes(raw).decode()) for key, raw in _RAW_FIELDS.decode(body).items()]


def build_object(fields: Iterable[tuple[str, str]]) -> bytes:
    members = (f"{json.dumps(key, ensure_ascii=False)}:{raw}" for key, raw in fields)
    return ("{" + ",".join(members) + "}").encode()


def merged(base: Fields, updates: Fields) -> bytes:
    """``base`` with each key of ``updates`` replaced where it is, or added at the end."""
    values = dict(base)
    values.update(updates)
    return build_object(values.items())
