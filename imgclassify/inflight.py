"""Work in flight in this process: how many of one kind run now, and when two last overlapped.

Two policies ask it: the engines' (a forward that runs alone, with none overlapping another
for a while and the last one just ended, gets every core) and the memory release's (only after
a request that ends with none in flight and none overlapping for a while).
"""

from __future__ import annotations

import math
import threading
import time


class InFlight:
    """A count of one kind of work in flight, the last time two of them were in flight at once,
    and the last time one ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self._overlapped_at = -math.inf
        self._left_at = -math.inf

    def enter(self, quiet_for: float = 0.0, following_within: float = math.inf) -> bool:
        """Count one in; whether it runs alone, with none overlapping another for ``quiet_for`` s
        and the last one ended at most ``following_within`` s ago."""
        now = time.monotonic()
        with self._lock:
            if self.running:
                self._overlapped_at = now
            self.running += 1
            return (self.running == 1 and now - self._overlapped_at >= quiet_for
                    and now - self._left_at <= following_within)

    def leave(self, quiet_for: float = 0.0) -> bool:
        """Count one out; whether it leaves none in flight, with none overlapping another for
        ``quiet_for`` s. Call it once for each :meth:`enter`, however the work ended."""
        now = time.monotonic()
        with self._lock:
            if self.running > 1:  # it overlapped another until now
                self._overlapped_at = now
            self.running -= 1
            self._left_at = now
            return self.running == 0 and now - self._overlapped_at >= quiet_for

    def reset(self) -> None:
        """Forget what was counted (a forked child runs none of its parent's work)."""
        self.__init__()
