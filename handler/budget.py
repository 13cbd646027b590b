"""One memory budget for the whole server: every byte held for requests counts against it.

Each request's own limits bound what it holds, but not the sum over requests. So each ingesting
request keeps a ``Claim`` on the process-wide ``Budget`` that follows what it holds (the run being
received, the open segment, uploads in flight, the piece being decoded), and waits for room
before it takes in more of its body. The wait happens inside ``data_received``, so Tornado stops
reading that socket and TCP pushes back on the client. A request that gets no room within
``BUDGET_WAIT_SECONDS`` is undone and answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from handler import metrics
from handler.errors import RunError


class Busy(RunError):
    """No memory to be had in time: the client should send the batch again later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(503, "server busy: no memory free for this request; retry later")
        self.retry_after = retry_after


class Budget:
    """Bytes the server may hold for requests; waiters are served first come, first served."""

    def __init__(self, max_bytes: int, wait_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, size: int, own: int = 0, timeout: float | None = None) -> None:
        """Take ``size`` bytes, waiting up to ``timeout`` seconds (BUDGET_WAIT_SECONDS by default)
        for them; raises Busy when they do not come in time. ``own`` is what the caller holds
        already: a request that holds all there is held gets its bytes at once, so one request
        alone always gets as far as its own limits take it (see Settings: the budget is at least
        that)."""
        if self.held == own or (not self._waiters and self.held + size <= self.max_bytes):
            self._take(size)
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        metrics.BUDGET_WAITING.inc()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_seconds if timeout is None else timeout)
        except TimeoutError:
            if waiter.done():  # granted just as the time ran out: keep it
                return
            self._waiters.remove(entry)
            self._wake()
            metrics.BUDGET_REFUSED.inc()
            raise Busy(max(1, round(self.wait_seconds))) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted, but the request is gone
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise
        finally:
            metrics.BUDGET_WAITING.dec()

    def release(self, size: int) -> None:
        if size:
            self.held -= size
            metrics.BUFFERED_BYTES.set(self.held)
            self._wake()

    def _take(self, size: int) -> None:
        self.held += size
        metrics.BUFFERED_BYTES.set(self.held)

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.held + size > self.max_bytes:
                return
            self._waiters.popleft()
            self._take(size)
            waiter.set_result(None)


class Claim:
    """What one request holds of the budget, following ``usage()`` (the bytes it holds now).

    ``room(extra)`` waits until the request may hold ``usage() + extra``: call it before taking in
    more of the body. ``settle()`` gives back what the request no longer holds (after each chunk,
    and whenever an upload ends); ``close()`` gives back everything."""

    def __init__(self, budget: Budget, usage: Callable[[], int]) -> None:
        self.budget = budget
        self.usage = usage
        self.held = 0
        self._extra = 0  # room taken for what is being taken in now

    async def room(self, extra: int) -> None:
        self._extra = extra
        need = self.usage() + extra - self.held
        if need > 0:
            await self.budget.acquire(need, self.held)
            self.held += need

    def settle(self) -> None:
        target = self.usage() + self._extra
        if self.held > target:
            self.budget.release(self.held - target)
            self.held = target

    def done_taking(self) -> None:
        """What ``room`` made room for is now counted by ``usage()``."""
        self._extra = 0
        self.settle()

    def close(self) -> None:
        self._extra = 0
        self.budget.release(self.held)
        self.held = 0
