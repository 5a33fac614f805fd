"""The service's background chores: re-reading what other replicas change, the event log's retention, and the
in-process state's checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from service.container import Container
from service.stores.retention import run_maintenance

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3_600.0


async def _every(interval: float, chore: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        try:
            await chore()
        except Exception as error:  # a chore must outlive one bad round (the database restarting, say)
            log.warning("%s failed: %s", name, error)
        await asyncio.sleep(interval)


class Chores:
    def __init__(self, container: Container) -> None:
        self.container = container
        self._tasks: list[asyncio.Task[None]] = []

    async def refresh_shared(self) -> None:
        """Identity rules and webhook subscriptions another replica saved."""
        await self.container.rules.refresh()
        await self.container.webhooks.refresh()

    def start(self) -> None:
        settings = self.container.settings
        retention = lambda: run_maintenance(self.container.database, settings.event_retention_days)  # noqa: E731
        self._tasks.append(asyncio.create_task(_every(RETENTION_INTERVAL_S, retention, "retention"), name="retention"))
        if self.container.database.dialect != "sqlite":  # only a shared database has other writers
            self._tasks.append(
                asyncio.create_task(_every(settings.shared_refresh_s, self.refresh_shared, "refresh"), name="refresh")
            )
        if (fingerprints := self.container.fingerprints) is not None:
            # Signatures other replicas (or `outguard signatures import`) changed: SQLite has such writers too.
            refresh = _every(settings.shared_refresh_s, fingerprints.refresh, "signature refresh")
            self._tasks.append(asyncio.create_task(refresh, name="signature-refresh"))
        if (checkpoint := self.container.checkpoint) is not None:
            task = asyncio.create_task(checkpoint.run(settings.checkpoint_interval_s), name="checkpoint")
            self._tasks.append(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
