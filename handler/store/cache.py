"""A bounded in-memory LRU of small stored objects, so a run read again is not fetched again.

It needs no invalidation because an object key is written exactly once: every upload gets a fresh
key (ingest.run_object_key), a patch or a retried post makes a new object, and a GET always asks
PostgreSQL for the run's current key before it looks here. A key that no row points at any more is
never asked for again and ages out.
"""

from __future__ import annotations

from collections import OrderedDict

from handler.base.metrics import OBJECT_CACHE_READS

ITEM_SHARE = 16  # one object may take at most 1/16 of the cache, so one huge run cannot flush it


class ObjectCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = max_bytes // ITEM_SHARE
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is None:
            OBJECT_CACHE_READS.labels("miss").inc()
            return None
        self._items.move_to_end(key)
        OBJECT_CACHE_READS.labels("hit").inc()
        return data

    def put(self, key: str, data: bytes) -> None:
        if not self.max_bytes or len(data) > self.max_item_bytes or key in self._items:
            return  # off, too big, or kept already
        self._items[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._items)
