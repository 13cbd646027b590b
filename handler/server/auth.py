"""API keys: each belongs to a tenant; only the keys' SHA-256 hashes are configured or held."""

from __future__ import annotations

import hashlib
import hmac
import re

OPEN_TENANT = "default"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def hash_key(key: str) -> str:
    """What API_KEYS holds for a key."""
    return _digest(key).hex()


class ApiKeys:
    """``API_KEYS`` is ``tenant:sha256hex,tenant:sha256hex,...``; several keys may share a tenant.

    With none configured the server is open and every run belongs to the ``default`` tenant.
    """

    def __init__(self, setting: str) -> None:
        self._entries: list[tuple[bytes, str]] = []
        for entry in filter(None, (part.strip() for part in setting.split(","))):
            tenant, _, digest = entry.partition(":")
            if not TENANT_NAME.fullmatch(tenant):
                raise ValueError(f"API_KEYS: tenant {tenant!r} must match {TENANT_NAME.pattern}")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"API_KEYS: tenant {tenant!r} needs a SHA-256 hex digest, not a key")
            self._entries.append((bytes.fromhex(digest), tenant))

    @property
    def open(self) -> bool:
        return not self._entries

    def tenant_for(self, key: str | None) -> str | None:
        """The key's tenant, or None. Every configured hash is compared, in constant time."""
        if self.open:
            return OPEN_TENANT
        if not key:
            return None
        digest = _digest(key)
        tenant = None
        for expected, owner in self._entries:
            if hmac.compare_digest(digest, expected):
                tenant = owner
        return tenant
