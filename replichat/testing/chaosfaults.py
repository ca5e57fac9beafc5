# -*- test-case-name: tests.test_chaos -*-
"""
The fault schedule of a chaos run: the L{Nemesis} draws, from its seeded
random source, which fault of L{KINDS} to inject next, when, on which
server or link, and when to undo it; a
L{replichat.testing.chaoscontrol.ServerControl} carries each out.
"""

from __future__ import annotations

import random
import time
import traceback

#: The nemesis's faults; each is drawn once per shuffled round, so that even
#: a short run injects every kind.
KINDS = ("kill", "pause", "isolate", "bridge", "one-way", "delay")


class Nemesis:
    """
    Injects one fault at a time at seeded random intervals, and undoes each
    after a seeded random while: a killed server is restarted, a paused one
    continued, a network fault healed (a new network fault heals the last
    one first).  At most n-1 servers are down or paused at once, the
    service's promise.

    @param control: the L{replichat.testing.chaoscontrol.ServerControl}
        that injects and undoes the faults.
    @param shared: the clients' L{replichat.testing.chaosclient.Shared}
        knowledge: faults favour the leader they last heard of.
    @param failure_timeout: the servers' failure timeout, which pauses
        are drawn around.
    """

    def __init__(self, rng: random.Random, control, shared, failure_timeout: float) -> None:
        self.rng = rng
        self.control = control
        self.shared = shared
        self.failure_timeout = failure_timeout
        self.bag: list[str] = []
        self.timers: list = []
        self.network_episode = 0
        self.network_active = False
        self.stopped = False

    def start(self, until: float) -> None:
        """
        Inject faults from about a second from now until the wall clock
        passes C{until}.
        """
        self.until = until
        self._later(self.rng.uniform(0.5, 1.5), self._tick)

    def stop(self) -> None:
        """
        No more faults; cancel the pending undos (the final phase heals,
        continues and restarts everything itself).
        """
        self.stopped = True
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers = []

    def _later(self, seconds: float, f, *args) -> None:
        self.timers = [t for t in self.timers if t.active()]
        self.timers.append(self.control.reactor.callLater(seconds, self._guarded, f, *args))

    def _guarded(self, f, *args) -> None:
        # A timer callback that raised would only be logged; say it loudly.
        if self.stopped:
            return
        try:
            f(*args)
        except Exception:
            self.control.record.harness_errors.append(traceback.format_exc())

    def _tick(self) -> None:
        if time.time() >= self.until:
            return
        for _ in range(len(KINDS)):
            if not self.bag:
                self.bag = list(KINDS)
                self.rng.shuffle(self.bag)
            kind = self.bag.pop()
            if self._inject(kind):
                break
        self._later(self.rng.uniform(0.4, 1.6), self._tick)

    def _target(self, candidates: list[int]) -> int:
        leader = self.shared.leader
        if leader in candidates and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(candidates)

    def _inject(self, kind: str) -> bool:
        """
        Inject a fault of C{kind}; C{False} if none fits now.
        """
        control = self.control
        nodes = sorted(control.cluster.servers)
        if kind in ("kill", "pause"):
            down = control.unavailable()
            candidates = [n for n in nodes if n not in down]
            if len(down) + 1 > len(nodes) - 1 or not candidates:
                return False
            node = self._target(candidates)
            if kind == "kill":
                control.kill(node)
                self._later(self.rng.uniform(0.3, 4.0), control.restart, node)
            else:
                control.pause(node)
                # Sometimes shorter than the failure timeout, sometimes far longer.
                timeout = self.failure_timeout
                pause = (self.rng.uniform(0.05, 0.8 * timeout) if self.rng.random() < 0.4
                         else self.rng.uniform(1.5 * timeout, 6 * timeout))
                self._later(pause, control.resume, node)
            return True
        if self.network_active:
            control.heal()
        mode = self.rng.choice(("drop", "stall"))
        if kind == "isolate":
            node = self._target(nodes)
            control.network_fault(kind, mode=mode, alone=node,
                                  apply=lambda p: p.partition({node}, set(nodes) - {node}, mode))
        elif kind == "bridge":
            a, b = self.rng.sample(nodes, 2)
            control.network_fault(kind, mode=mode, pair=[a, b],
                                  apply=lambda p: p.cut(a, b, mode))
        elif kind == "one-way":
            a, b = self.rng.sample(nodes, 2)
            control.network_fault(kind, mode=mode, sender=a, receiver=b,
                                  apply=lambda p: p.block(a, b, mode))
        else:
            a, b = self.rng.sample(nodes, 2)
            seconds = round(self.rng.uniform(0.02, 0.3), 3)
            control.network_fault(kind, pair=[a, b], seconds=seconds,
                                  apply=lambda p: p.set_delay(a, b, seconds))
        self.network_active = True
        self.network_episode += 1
        self._later(self.rng.uniform(0.5, 4.0), self._heal, self.network_episode)
        return True

    def _heal(self, episode: int) -> None:
        if episode == self.network_episode and self.network_active:
            self.control.heal()
            self.network_active = False
