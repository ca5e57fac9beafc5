# -*- test-case-name: tests.test_simulate -*-
"""
One simulated server process: L{Process}, the reactor time its node is
given and the gate its input and output pass.

It is the shared clock, except that while the process is stopped (SIGSTOP,
or blocked in a slow fsync) its timers, its reads and its writes wait, and
once it is dead (crashed) none of them ever happens.  When it runs again it
first sends what it had computed, then runs its overdue timers (Twisted
runs timed calls before it polls for I/O), then reads what arrived
meanwhile.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Callable

from twisted.internet.task import Clock


class Process:
    """
    One server process: its reactor time (an C{IReactorTime} for the node
    and its client handler) and the gate its input and output pass.

    @ivar dead: it crashed; nothing of it runs again.
    @ivar timer_hook: L{None}, or C{hook(function, thunk)} called when a
        timer comes due, before it runs; it returns true if it took the call
        over (L{replichat.testing.simcluster.SimCluster} uses it to make a
        node's fsync slow, or crash around it).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.dead = False
        self.timer_hook: Callable[[object, Callable], bool] | None = None
        self._stops: dict[str, int] = {}
        self._outbound: deque = deque()
        self._timers: deque = deque()
        self._inbound: deque = deque()

    @property
    def running(self) -> bool:
        return not self.dead and not self._stops

    # -- IReactorTime --------------------------------------------------------

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, f: Callable, *args: object, **kw: object):
        # The shared clock's DelayedCall, so the caller can cancel it; what
        # fires while the process is stopped waits for it to run again.
        return self._clock.callLater(delay, self._fire, f, partial(f, *args, **kw))

    def getDelayedCalls(self) -> list:
        return []

    def _fire(self, f: Callable, thunk: Callable) -> None:
        if self.dead:
            return
        if self._stops:
            self._timers.append((f, thunk))
        else:
            self._run_timer(f, thunk)

    def _run_timer(self, f: object, thunk: Callable) -> None:
        if f is not None and self.timer_hook is not None and self.timer_hook(f, thunk):
            return
        thunk()

    # -- input and output ------------------------------------------------------

    def receive(self, thunk: Callable) -> None:
        """
        Something arrived for the process: it reads it now or when it runs.
        """
        if self.dead:
            return
        if self._stops:
            self._inbound.append(thunk)
        else:
            thunk()

    def emit(self, thunk: Callable) -> None:
        """
        The process writes something: it leaves now, or when the process
        runs again (a stopped process writes nothing).
        """
        if self.dead:
            return
        if self._stops:
            self._outbound.append(thunk)
        else:
            thunk()

    # -- stopping, running, dying ------------------------------------------------

    def stop(self, reason: str) -> None:
        """
        Stop running for C{reason} ("sigstop", "fsync", ...) until L{cont}
        with the same reason; stops for several reasons nest.
        """
        self._stops[reason] = self._stops.get(reason, 0) + 1

    def cont(self, reason: str) -> None:
        count = self._stops.get(reason, 0) - 1
        if count > 0:
            self._stops[reason] = count
        else:
            self._stops.pop(reason, None)
        self._wake()

    def hold_first(self, thunk: Callable) -> None:
        """
        Run C{thunk} first when the process runs again (the rest of a call
        it was blocked in).
        """
        self._timers.appendleft((None, thunk))

    def _wake(self) -> None:
        while self.running and (self._outbound or self._timers or self._inbound):
            if self._outbound:
                self._outbound.popleft()()
            elif self._timers:
                self._run_timer(*self._timers.popleft())
            else:
                self._inbound.popleft()()

    def kill(self) -> None:
        self.dead = True
        self._outbound.clear()
        self._timers.clear()
        self._inbound.clear()
