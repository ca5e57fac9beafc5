# -*- test-case-name: tests.test_history -*-
"""
What the checker reports: the kinds of anomaly (L{KINDS}), each L{Anomaly}
found, and the L{Report} of a run.

L{replichat.testing.checker} tells what each kind means, and re-exports
all of these.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from attrs import define, field, frozen

if TYPE_CHECKING:
    from replichat.testing.history import History

# -- anomalies -------------------------------------------------------------------

DIVERGED = "diverged"
STATE = "state"
ORDER = "order"
NOT_CONVERGED = "not-converged"
LOST = "lost"
DUPLICATE = "duplicate"
WRONG_ANSWER = "wrong-answer"
FAILED_BUT_APPLIED = "failed-but-applied"
PHANTOM = "phantom"
MISDELIVERED = "misdelivered"
UNCOMMITTED_READ = "uncommitted-read"
READ_TWICE = "read-twice"
REALTIME = "realtime"
STALE_READ = "stale-read"

KINDS = (
    DIVERGED, STATE, ORDER, NOT_CONVERGED, LOST, DUPLICATE, WRONG_ANSWER,
    FAILED_BUT_APPLIED, PHANTOM, MISDELIVERED, UNCOMMITTED_READ, READ_TWICE, REALTIME,
    STALE_READ,
)

# -- the report ---------------------------------------------------------------------


@frozen
class Anomaly:
    """
    One thing that must not happen, and did.

    @ivar kind: one of L{KINDS}.
    @ivar ops: the numbers of the history events involved.
    @ivar indexes: the log indexes involved.
    @ivar nodes: the servers involved.
    """

    kind: str
    text: str
    ops: tuple = ()
    indexes: tuple = ()
    nodes: tuple = ()


@define
class Report:
    """
    What L{replichat.testing.checker.check} found.

    @ivar notes: what could not be checked, and why.
    @ivar stats: counts of what was checked.
    """

    anomalies: list = field(factory=list)
    notes: list = field(factory=list)
    stats: Counter = field(factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def kinds(self) -> Counter:
        return Counter(a.kind for a in self.anomalies)

    def summary(self) -> str:
        s = self.stats
        head = (
            "%d ops (%d ok, %d failed, %d unknown), %d pushes, %d committed entries, %d replicas"
            % (s["ops"], s["ops ok"], s["ops fail"], s["ops unknown"], s["pushes"],
               s["entries"], s["replicas"])
        )
        if self.ok:
            return head + ": no anomalies"
        kinds = ", ".join("%s %d" % kv for kv in sorted(self.kinds().items()))
        return "%s: %d anomalies (%s)" % (head, len(self.anomalies), kinds)

    def describe(self, history: History | None = None, limit: int = 20) -> str:
        """
        The summary, the first C{limit} anomalies, and (given the history)
        the client events each involves.
        """
        lines = [self.summary()]
        for anomaly in self.anomalies[:limit]:
            lines.append("%s: %s" % (anomaly.kind, anomaly.text))
            if history is not None and anomaly.ops:
                lines.extend("    " + line for line in history.describe(anomaly.ops).splitlines())
        if len(self.anomalies) > limit:
            lines.append("... and %d more" % (len(self.anomalies) - limit,))
        lines.extend("note: " + note for note in self.notes)
        return "\n".join(lines)
