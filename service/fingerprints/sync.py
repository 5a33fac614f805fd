"""Keeping each replica's signature index current: the change feed of the signatures table.

Every add, refresh and removal writes a row to `signature_changes` in its own
transaction (`service.stores.signatures`). A replica reads the rows after the last one
it applied, reads each changed signature as it stands now, and applies it
(`SignatureDb.apply_changes`), which is idempotent. It reads:

- when a message finds the shared signature counter moved (`service.fingerprints.state`):
  before that message is matched, so a signature added through one replica counts on
  the next message through any other;
- every `OUTGUARD_SHARED_REFRESH_S` (5 s) anyway, which also covers a change whose
  counter update was lost (Redis unreachable), and signatures imported by
  `outguard signatures import` into a running service's database.

On PostgreSQL, ids are taken when a row is inserted but become visible when its
transaction commits, so a row may appear after a higher one was already read. The
cursor therefore remembers which ids above its position it has applied, and moves
past a missing id only once the id is seen or `GAP_WAIT_S` has passed (an id taken by
a transaction that rolled back never appears).
"""

from __future__ import annotations

import time
from collections.abc import Callable

GAP_WAIT_S = 60.0


class ChangeCursor:
    """A position in the change feed: every id at or below `position` is applied (or given up on)."""

    def __init__(self, position: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.position = position
        self.applied: set[int] = set()  # applied ids above the position
        self._missing_since: dict[int, float] = {}
        self._now = monotonic
        self.read_at = monotonic()  # when the feed was last read

    def unseen(self, change_ids: list[int]) -> list[int]:
        """Of these ids (read after `position`), those not applied yet."""
        return [i for i in change_ids if i not in self.applied]

    def advance(self, change_ids: list[int]) -> None:
        """These ids are applied: move past every id below them that is applied or given up on."""
        now = self.read_at = self._now()
        self.applied.update(change_ids)
        if not self.applied:
            return
        for missing in range(self.position + 1, max(self.applied)):
            if missing not in self.applied:
                self._missing_since.setdefault(missing, now)
        while True:
            following = self.position + 1
            if following in self.applied:
                self.applied.discard(following)
            elif now - self._missing_since.get(following, now) >= GAP_WAIT_S:
                pass  # taken by a transaction that never committed
            else:
                break
            self._missing_since.pop(following, None)
            self.position = following

    def idle_for(self) -> float:
        return self._now() - self.read_at
