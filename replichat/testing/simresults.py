# -*- test-case-name: tests.test_simulate -*-
"""
What simulator runs found: one seed's L{RunResult} (anomalies, trace and
its digest, counts, the command that replays it) and the L{Summary} of
many seeds that C{bin/simulate} prints.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from attrs import define, field, frozen

from replichat.testing.simsettings import Settings

#: How many trace lines a report shows before the replay command.
TRACE_TAIL = 60


@frozen
class SimAnomaly:
    """
    Something the simulator itself found wrong (the checker's are
    L{replichat.testing.history.Anomaly}).
    """

    kind: str
    text: str


@frozen
class RunResult:
    """
    What one seed's run did and found.

    @ivar anomalies: the checker's and the simulator's, each with C{kind}
        and C{text}.
    @ivar trace: one line per event, C{"%9.3f event"}.
    @ivar faults: faults injected, by kind.
    @ivar ops: operations by C{"op status"}.
    @ivar simulated: simulated seconds the run took.
    @ivar wall: wall-clock seconds it took (not part of the trace).
    @ivar stalls: fsyncs made slow (while a C{slow-fsync} fault lasted).
    @ivar planted: the planted bugs (L{failpoints}) that were on.
    """

    seed: int
    settings: Settings
    anomalies: tuple
    trace: tuple
    faults: dict
    ops: dict
    simulated: float
    wall: float
    converged: bool
    stalls: int = 0
    planted: tuple = ()
    report: Any = field(default=None, eq=False, repr=False)
    history: Any = field(default=None, eq=False, repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode("utf-8")).hexdigest()

    def replay_command(self, defaults: Settings = Settings()) -> str:
        """
        The command that runs this seed again and prints its trace.
        """
        words = ["bin/simulate", "--seed", str(self.seed), "--trace"]
        s = self.settings
        words += ["--mode", s.mode, "--scenario", s.scenario, "--servers", str(s.servers)]
        for name, flag in (("clients", "--clients"), ("ops", "--ops"), ("faulty", "--faulty"),
                           ("snapshot_every", "--snapshot-every")):
            if getattr(s, name) != getattr(defaults, name):
                words += [flag, str(getattr(s, name))]
        for bug in self.planted:
            words += ["--plant", bug]
        return " ".join(words)

    def describe(self, tail: int = TRACE_TAIL) -> str:
        """
        The anomalies, the end of the trace and the replay command.
        """
        s = self.settings
        lines = ["seed %d (%s, %s, %d servers): %d anomalies" % (
            self.seed, s.mode, s.scenario, s.servers, len(self.anomalies))]
        lines += ["  %s: %s" % (a.kind, a.text) for a in self.anomalies]
        if self.report is not None and self.history is not None and self.report.anomalies:
            for anomaly in self.report.anomalies[:5]:
                if anomaly.ops:
                    lines.append("  ops of %s:" % (anomaly.kind,))
                    lines += ["    " + line
                              for line in self.history.describe(anomaly.ops).splitlines()]
        lines.append("last %d trace lines:" % (min(tail, len(self.trace)),))
        lines += list(self.trace[-tail:])
        lines.append("replay: " + self.replay_command())
        return "\n".join(lines)


@define
class Summary:
    """
    Totals over many seeds.
    """

    seeds: int = 0
    faults: Counter = field(factory=Counter)
    ops: Counter = field(factory=Counter)
    anomalies: list = field(factory=list)  # (seed, anomaly)
    failed: list = field(factory=list)  # RunResults with anomalies
    simulated: float = 0.0
    wall: float = 0.0
    converged: int = 0
    stalls: int = 0
    by_mode: Counter = field(factory=Counter)

    def add(self, result: RunResult) -> None:
        self.seeds += 1
        self.faults.update(result.faults)
        self.ops.update(result.ops)
        self.simulated += result.simulated
        self.wall += result.wall
        self.converged += result.converged
        self.stalls += result.stalls
        self.by_mode[result.settings.mode] += 1
        for anomaly in result.anomalies:
            self.anomalies.append((result.seed, anomaly))
        if result.anomalies:
            self.failed.append(result)

    def describe(self) -> str:
        lines = ["seeds run: %d (%s); converged after heal: %d" % (
            self.seeds, ", ".join("%s %d" % kv for kv in sorted(self.by_mode.items())),
            self.converged)]
        lines.append("faults injected: %d" % (sum(self.faults.values()),))
        lines += ["  %-24s %d" % kv for kv in sorted(self.faults.items())]
        lines.append("  (fsyncs stalled by slow-fsync: %d)" % (self.stalls,))
        by_op: dict[str, Counter] = {}
        for key, count in self.ops.items():
            op, status = key.split(" ", 1)
            by_op.setdefault(op, Counter())[status] += count
        lines.append("operations: %d" % (sum(self.ops.values()),))
        for op in sorted(by_op):
            lines.append("  %-16s %s" % (op, ", ".join(
                "%s %d" % kv for kv in sorted(by_op[op].items()))))
        kinds = Counter(a.kind for _, a in self.anomalies)
        lines.append("anomalies: %d%s" % (len(self.anomalies), "" if not kinds else " (%s)" % (
            ", ".join("%s %d" % kv for kv in sorted(kinds.items())),)))
        by_kind: dict[str, list[int]] = {}
        for seed, anomaly in self.anomalies:
            seeds = by_kind.setdefault(anomaly.kind, [])
            if seed not in seeds:
                seeds.append(seed)
        for kind in sorted(by_kind):
            seeds = by_kind[kind]
            lines.append("  %s: seeds %s%s" % (
                kind, " ".join(map(str, seeds[:30])), " ..." if len(seeds) > 30 else ""))
        ratio = self.simulated / self.wall if self.wall else 0.0
        lines.append("simulated %.1fs in %.1fs wall: %.1f simulated seconds per wall second, "
                     "%.1f seeds/s" % (self.simulated, self.wall, ratio,
                                       self.seeds / self.wall if self.wall else 0.0))
        return "\n".join(lines)
