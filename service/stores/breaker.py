"""A circuit breaker for one backing service: after a failure, stop calling it until a probe finds it back.

Why: a server that hangs (SIGSTOP, a stalled network path, a full accept queue) answers
nothing, so every call to it waits out its whole timeout. Scoring makes about six Redis
calls per message; at 0.25 s each a hung Redis cut scoring from about 245 to 3 messages/s.
With the breaker, the first failure opens it. While it is open, callers ask `allow()`,
get False at once, and take their fallback without touching the server.

    closed ──failure──▶ open ──interval──▶ half_open ──probe ok, recover ok──▶ closed
                         ▲                     │
                         └─probe or recover────┘
                                failed

- **One probe at a time, never by a request.** Opening starts one background task per
  breaker. It sleeps `interval_s`, then runs `probe` (for Redis, a PING with the
  client's usual timeout), and repeats until the probe succeeds. Requests never wait for
  the probe, and there is never more than one in flight. If the task is gone (its event
  loop ended, say), the next caller that is refused starts another.
- **`recover` runs before the breaker closes.** After a successful probe the breaker is
  `half_open`: callers are still refused while `recover` puts the service back in step
  (for Redis, the lock statuses the database ledger recorded during the outage are
  written back). If `recover` raises, the breaker opens again and probes again.
- **Loop-bound, not thread-safe.** All state changes happen on the event loop of the
  caller. That is all the service needs: each worker process has one loop and its own
  breaker.

Not pybreaker, aiobreaker or purgatory: in all three, the half-open state lets the next
real call through as the trial. purgatory and pybreaker let every concurrent caller
through while half-open. pybreaker's async support needs Tornado and its sync `call`
holds a lock for the whole call. aiobreaker has had no release since 2021. None of them
probes with a separate cheap command, or runs a recovery step before it closes. This
service needs both, so the breaker is this small class.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls are refused; a probe is waiting out its interval
    HALF_OPEN = "half_open"  # calls are still refused; the probe, or the recovery after it, is running


async def _nothing() -> None:
    return None


class CircuitBreaker:
    """Opens on the first failure; one background probe closes it again. See the module docstring.

    - `probe`: whether the service answers. It must bound its own wait (a timeout) and
      may raise; raising counts as a failed probe.
    - `recover`: what to do once the probe succeeds, before calls go through again.
    - `on_change(open)` and `on_probe(ok)`: hooks for metrics.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        *,
        interval_s: float = 1.0,
        recover: Callable[[], Awaitable[None]] = _nothing,
        on_change: Callable[[bool], None] = lambda _open: None,
        on_probe: Callable[[bool], None] = lambda _ok: None,
        name: str = "service",
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the probe interval must be positive")
        self.interval_s = interval_s
        self.name = name
        self._probe_call = probe
        self._recover = recover
        self._on_change = on_change
        self._on_probe = on_probe
        self.state = BreakerState.CLOSED
        self.opened_at: float | None = None  # wall-clock time it opened (the outage began at most this long ago)
        self.last_error: str | None = None
        self.skipped = 0  # calls refused since the process started
        self.probes = 0  # probes run since the process started
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def allow(self) -> bool:
        """Whether a call may go to the service now. False is counted as a skipped call."""
        if self.state is BreakerState.CLOSED:
            return True
        self.skipped += 1
        self._ensure_probe()
        return False

    def trip(self, error: BaseException | str) -> bool:
        """A call failed: open (if closed) and start the probe; whether this call opened it."""
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.state is not BreakerState.CLOSED:
            return False
        self.state = BreakerState.OPEN
        self.opened_at = time.time()
        self._on_change(True)
        self._ensure_probe()
        return True

    def describe(self) -> dict[str, object]:
        """The state, for readiness detail."""
        return {
            "state": self.state.value,
            "opened_at": self.opened_at,
            "last_error": self.last_error,
            "probe_interval_s": self.interval_s,
            "skipped_calls": self.skipped,
            "probes": self.probes,
        }

    def _ensure_probe(self) -> None:
        task = self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next refused async caller starts it
            return
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._task = loop.create_task(self._probe_until_closed(), name=f"{self.name}-breaker-probe")

    async def _probe_until_closed(self) -> None:
        while self.state is not BreakerState.CLOSED:
            await asyncio.sleep(self.interval_s)
            self.state = BreakerState.HALF_OPEN
            self.probes += 1
            try:
                ok = bool(await self._probe_call())
            except Exception as error:  # any failure of the probe means "still down"
                ok = False
                self.last_error = f"{type(error).__name__}: {error}"
            self._on_probe(ok)
            if not ok:
                self.state = BreakerState.OPEN
                continue
            try:
                await self._recover()
            except Exception as error:  # back, but not usable yet: probe again
                log.warning("%s answers again, but recovery failed: %s", self.name, error)
                self.last_error = f"{type(error).__name__}: {error}"
                self.state = BreakerState.OPEN
                continue
            self.state = BreakerState.CLOSED
            self.opened_at = None
            self._on_change(False)

    async def close(self) -> None:
        """Stop the probe (at shutdown); the state stays as it is."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        if task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await task
