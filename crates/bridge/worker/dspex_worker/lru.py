"""A small thread-safe least-recently-used map, for things costly to build
(LMs, programs, model-catalog answers) that requests share."""

from __future__ import annotations

import collections
import threading


class LruCache:
    """A small thread-safe least-recently-used map of things costly to build.

    ``get_or_build`` builds outside the lock, so a slow build never blocks
    readers of other keys (two threads may build the same key once each;
    the first stored wins).
    """

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key, build):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()
        with self._lock:
            value = self._items.setdefault(key, value)
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
