"""The delivery worker: claims due rows of the outbox and hands each to its sink,
recording the outcome (delivered; retried later with exponential backoff and
jitter; or, after the last attempt, dead)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from ..config import Sink
from ..observability import logged_id
from .outbox import Outbox
from .sinks import send

# The name the alerts module always logged under: log filters and tests rely on it.
log = logging.getLogger("agentmark_gw.alerts")


class Delivery:
    """The delivery worker: claims due rows and hands each to its sink.

    One loop per sink (and one for rows of sinks no longer configured), so a
    slow or hanging sink holds back only its own deliveries: with one loop,
    each batch of 32 waited for its slowest row, whatever its sink."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[Sink],
        deliver_to_runner: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        max_attempts: int,
        backoff: float,
        lease: float = 30.0,
        on_outcome: Callable[[str], None] = lambda outcome: None,
        poll: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.sinks = {s.name: s for s in sinks}
        self._to_runner = deliver_to_runner
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._on_outcome = on_outcome
        self._poll = poll
        self._lease = lease
        # One wake-up event per loop: a new alert may be for any sink.
        self._wakes: list[asyncio.Event] = []
        # A delivery must end well inside its lease, or another process could take it meanwhile.
        self._http = httpx.AsyncClient(timeout=max(0.5, min(10.0, lease * 0.5)))
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        names = tuple(self.sinks)
        claims = [{"sink": name} for name in names] + [{"other_than": names}]
        for claim in claims:
            wake = asyncio.Event()
            self._wakes.append(wake)
            self._tasks.append(asyncio.create_task(self._loop(wake, **claim)))

    def wake(self) -> None:
        for wake in self._wakes:
            wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Let deliveries under way finish for `grace` seconds; what is left
        stays in the outbox for the next start."""
        if self._tasks:
            self._stopping = True
            self.wake()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._tasks)), grace)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    _stopping = False

    async def _loop(self, wake: asyncio.Event, **which: Any) -> None:
        while not self._stopping:
            try:
                rows = await asyncio.to_thread(self.outbox.claim, 32, self._lease, **which)
                if rows:
                    await asyncio.gather(*(self._deliver(row) for row in rows))
                    continue  # there may be more due
            except Exception:  # noqa: BLE001 - the worker outlives any one failure
                log.exception("alert delivery loop failed; retrying")
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self._poll)

    async def _deliver(self, row: dict[str, Any]) -> None:
        sink = self.sinks.get(row["sink"])
        described = f"alert {logged_id(row['alert_id'])} ({row['type']} {row['status']}) to {row['sink']}"
        try:
            if sink is None:
                raise RuntimeError(f"no sink named {row['sink']} is configured any more")
            await send(sink, json.loads(row["payload"]), self._http, self._to_runner)
        except Exception as error:  # noqa: BLE001 - every failure is retried, then kept
            reason = getattr(error, "message", None) or str(error) or type(error).__name__
            state = await asyncio.to_thread(self.outbox.failed, row["id"], reason, self._max_attempts, self._backoff)
            self._on_outcome("dead" if state == "dead" else "retried")
            log.warning("%s failed (%s): %s", described, "dead letter" if state == "dead" else "will retry", reason)
            return
        await asyncio.to_thread(self.outbox.delivered, row["id"])
        self._on_outcome("delivered")
        log.info("%s delivered", described)
