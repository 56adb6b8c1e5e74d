"""The optional replay guard: refuse a signed body seen again within a window.

AgentMark signs the body only, with no timestamp or nonce, so a captured
request stays valid for ever; remembering recent bodies is the only defence.
It is off by default because the platform itself sends byte-identical bodies
when someone re-runs the same prompt. Memory is bounded: one 32-byte digest
per distinct body within the window, and at most `max_entries` of them.

Per process: with several workers or replicas, a replay that lands on
another process is not seen. Put the guard where one process sees all
traffic, or accept that limit.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict


class ReplayGuard:
    def __init__(self, window: float, max_entries: int = 100_000) -> None:
        self._window = window
        self._max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    @staticmethod
    def digest(body: bytes) -> bytes:
        return hashlib.sha256(body).digest()

    def is_replay(self, digest: bytes, now: float | None = None) -> bool:
        """Record a body's digest; True if it was already seen within the window."""
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self._window and len(self._seen) < self._max_entries:
                break
            del self._seen[oldest]
        if digest in self._seen:
            return True
        self._seen[digest] = now
        return False

    def forget(self, digest: bytes) -> None:
        """Let a body through again: its request failed and may be retried."""
        self._seen.pop(digest, None)
