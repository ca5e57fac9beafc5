# -*- test-case-name: tests.test_simulate -*-
"""
The simulated clock: L{SimClock}, the one clock a simulated cluster
(L{replichat.testing.simcluster}) and the simulator's workload and nemesis
run on.

Calls due at one time run in the order they were scheduled, as with
L{twisted.internet.task.Clock}, so the same calls give the same run.
"""

from __future__ import annotations

import heapq
from typing import Callable

from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock


class SimClock(Clock):
    """
    A L{Clock} on a heap: calls run in the same order (by time, ties in the
    order they were scheduled) but scheduling one costs O(log n), not a
    sort of every pending call, which dominated a long simulation.

    A cancelled call, or one reset to an earlier time, leaves a stale entry
    that is dropped when it comes up; one reset to a later time (Twisted
    then only notes the delay) is pushed again at its new time.
    """

    def __init__(self) -> None:
        self._heap: list = []
        self._seq = 0

    @property
    def calls(self) -> list:
        """
        The pending calls, soonest first (as L{Clock.calls}).
        """
        pending: list = []
        for _, _, call in sorted(self._heap):
            if not call.cancelled and not call.called and call not in pending:
                pending.append(call)
        return sorted(pending, key=lambda call: call.getTime())

    def callLater(self, delay: float, f: Callable, *args: object, **kw: object):
        call = DelayedCall(
            self.rightNow + delay, f, args, kw, self._cancelled, self._push, self.seconds
        )
        self._push(call)
        return call

    def _push(self, call: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.getTime(), self._seq, call))

    def _cancelled(self, call: DelayedCall) -> None:
        pass  # left in the heap; dropped when it comes up

    def getDelayedCalls(self) -> list:
        return self.calls

    def _top(self) -> DelayedCall | None:
        """
        The entry due first that still stands for its call, or L{None}.
        """
        heap = self._heap
        while heap:
            when, _, call = heap[0]
            if call.cancelled or call.called:
                heapq.heappop(heap)
            elif call.getTime() > when:
                heapq.heappop(heap)
                if call.delayed_time:
                    call.activate_delay()
                self._push(call)
            elif call.getTime() < when:
                heapq.heappop(heap)  # moved earlier: its new entry stands
            else:
                return call
        return None

    def next_time(self) -> float | None:
        """
        When the soonest pending call is due, or L{None}.
        """
        call = self._top()
        return None if call is None else call.getTime()

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while True:
            call = self._top()
            if call is None or call.getTime() > self.rightNow:
                return
            heapq.heappop(self._heap)
            call.called = 1
            call.func(*call.args, **call.kw)
