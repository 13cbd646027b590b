"""The object cache's bounds: bytes, least recently used out first. That a patched run is never
served from its old object is tested through the server, in test_langsmith_api.py."""

from __future__ import annotations

from handler.store.cache import ObjectCache


def test_the_least_recently_used_objects_leave_first_and_the_bytes_stay_bounded():
    cache = ObjectCache(max_bytes=16 * 100)  # items up to 100 bytes
    for i in range(16):
        cache.put(f"k{i}", bytes(100))
    assert cache.get("k0") == bytes(100)  # now the most recently used
    cache.put("k16", bytes(100))
    assert cache.get("k1") is None  # the least recently used went
    assert cache.get("k0") is not None and cache.get("k16") is not None
    assert len(cache) == 16


def test_an_object_over_its_share_is_not_kept_and_zero_keeps_nothing():
    cache = ObjectCache(max_bytes=1600)
    cache.put("big", bytes(101))
    assert cache.get("big") is None
    off = ObjectCache(max_bytes=0)
    off.put("k", b"x")
    off.put("empty", b"")
    assert (off.get("k"), off.get("empty"), len(off)) == (None, None, 0)
