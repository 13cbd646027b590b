"""One memory budget for the whole server: every byte held for requests counts against it.

Each request's own limits bound what it holds, but not the sum over requests. So each ingesting
request keeps a ``Claim`` on the process-wide ``Budget`` that follows what it holds (the run being
received, the open segment, uploads in flight, the piece being decoded), and waits for room
before it takes in more of its body. The wait happens inside ``data_received``, so Tornado stops
reading that socket and TCP pushes back on the client. A request that gets no room within
``BUDGET_WAIT_SECONDS`` -- or sooner, when an older request needs what it holds (see Budget) --
is undone and answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Callable

from handler.base import metrics
from handler.base.errors import RunError


class Busy(RunError):
    """No memory to be had in time: the client should send the batch again later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(503, "server busy: no memory free for this request; retry later")
        self.retry_after = retry_after


class _Waiter:
    __slots__ = ("size", "own", "rank", "future")

    def __init__(self, size: int, own: int, rank: int, future: asyncio.Future) -> None:
        self.size, self.own, self.rank, self.future = size, own, rank, future


class Budget:
    """Bytes the server may hold for requests.

    Room goes to the oldest request first (``rank``: the order requests began in). Requests that
    hold part of the budget while they wait for more could otherwise wait for each other until
    they all time out (32 clients of one large run each held their first parts and stalled). So
    when the oldest waiter cannot be served, the youngest waiting requests are refused at once
    (Busy, 503), until what they hold covers what it lacks: the oldest always progresses.
    """

    def __init__(self, max_bytes: int, wait_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self.held = 0
        self.doomed = 0  # held by requests refused to make room, until they let go of it
        self._waiters: list[_Waiter] = []  # oldest request first
        self._ranks = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def next_rank(self) -> int:
        """A request's place in the order requests began in."""
        return next(self._ranks)

    async def acquire(self, size: int, own: int = 0, rank: int | None = None) -> None:
        """Take ``size`` bytes for a request that holds ``own`` already, waiting up to
        BUDGET_WAIT_SECONDS for them; raises Busy when they do not come in time, or when an older
        request needs what this one holds. A request that holds all that is held gets its bytes
        at once, so one request alone always gets as far as its own limits take it (Settings
        makes the budget at least that)."""
        rank = self.next_rank() if rank is None else rank
        older = any(w.rank < rank for w in self._waiters)
        if self.held == own or (not older and self.held + size <= self.max_bytes):
            self._take(size)
            return
        waiter = _Waiter(size, own, rank, asyncio.get_running_loop().create_future())
        bisect.insort(self._waiters, waiter, key=lambda w: w.rank)
        metrics.BUDGET_WAITING.inc()
        self._make_room()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_seconds)
        except TimeoutError:
            if waiter.future.done() and waiter.future.exception() is None:  # granted just now
                return
            self._drop(waiter)
            metrics.BUDGET_REFUSED.inc()
            raise Busy(self.retry_after) from None
        except Busy:
            metrics.BUDGET_REFUSED.inc()
            raise
        except BaseException:  # the request is gone
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(size)
            else:
                self._drop(waiter)
            raise
        finally:
            metrics.BUDGET_WAITING.dec()

    @property
    def retry_after(self) -> int:
        return max(1, round(self.wait_seconds))

    def release(self, size: int) -> None:
        if size:
            self.held -= size
            metrics.BUFFERED_BYTES.set(self.held)
            self._wake()

    def let_go(self, doomed: int) -> None:
        """A refused request has given back what it held (see ``doomed``)."""
        self.doomed -= doomed

    def _take(self, size: int) -> None:
        self.held += size
        metrics.BUFFERED_BYTES.set(self.held)

    def _drop(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if self.held + head.size > self.max_bytes and self.held != head.own:
                break
            self._waiters.pop(0)
            self._take(head.size)
            head.future.set_result(None)
        self._make_room()

    def _make_room(self) -> None:
        """Refuse the youngest waiters until what they hold covers what the oldest lacks."""
        if not self._waiters:
            return
        head = self._waiters[0]
        lacking = self.held - self.doomed + head.size - self.max_bytes
        for young in reversed(self._waiters[1:]):
            if lacking <= 0:
                return
            if not young.own:  # holds nothing: refusing it frees nothing
                continue
            self._waiters.remove(young)
            busy = Busy(self.retry_after)
            busy.doomed = young.own
            self.doomed += young.own
            lacking -= young.own
            young.future.set_exception(busy)


class Claim:
    """What one request holds of the budget, following ``usage()`` (the bytes it holds now).

    ``room(extra)`` waits until the request may hold ``usage() + extra``: call it before taking in
    more of the body. ``settle()`` gives back what the request no longer holds (after each chunk,
    and whenever an upload ends); ``close()`` gives back everything."""

    def __init__(self, budget: Budget, usage: Callable[[], int]) -> None:
        self.budget = budget
        self.usage = usage
        self.rank = budget.next_rank()
        self.held = 0
        self._extra = 0  # room taken for what is being taken in now
        self._doomed = 0  # refused to make room: what the budget waits for this request to free

    async def room(self, extra: int) -> None:
        self._extra = extra
        need = self.usage() + extra - self.held
        if need > 0:
            try:
                await self.budget.acquire(need, self.held, self.rank)
            except Busy as e:
                self._doomed = getattr(e, "doomed", 0)
                raise
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
        if self._doomed:
            self.budget.let_go(self._doomed)
            self._doomed = 0
        self.budget.release(self.held)
        self.held = 0
