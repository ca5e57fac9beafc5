# -*- test-case-name: tests.test_chaos -*-
"""
What a chaos run writes down as it goes, for its summary: L{RunRecord}
holds the faults injected (and undone), counted and in order, the
anomalies the run itself sees (the history checker reports the rest),
remarks, and the driver's own failures.
"""

from __future__ import annotations

import collections
import time

import attrs

from replichat.testing.history import Anomaly


@attrs.define(eq=False)
class RunRecord:
    """
    The record of one run, filled in by the driver, the nemesis and the
    final phase.

    @ivar started: when the workload started; the fault log counts from it.
    @ivar faults: count of each fault injected (and undone), by kind.
    @ivar fault_log: every fault, with its time since C{started}.
    @ivar notes: remarks for the summary (what the final phase saw).
    @ivar anomalies: the anomalies found, by the run and by the checker.
    @ivar harness_errors: tracebacks of the driver's own failures.
    """

    started: float = attrs.field(factory=time.time)
    faults: collections.Counter = attrs.field(factory=collections.Counter)
    fault_log: list[dict] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    anomalies: list = attrs.field(factory=list)
    harness_errors: list[str] = attrs.field(factory=list)

    def fault(self, kind: str, **detail) -> None:
        """
        Count a fault of C{kind} and log it, with C{detail}.
        """
        self.faults[kind] += 1
        now = time.time()
        self.fault_log.append({"at": round(now - self.started, 3), "time": round(now, 3),
                               "kind": kind, **detail})

    def anomaly(self, kind: str, text: str) -> None:
        """
        Report an anomaly the run itself saw (the checker reports the rest).
        """
        self.anomalies.append(Anomaly(kind, text))
