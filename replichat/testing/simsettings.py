# -*- test-case-name: tests.test_simulate -*-
"""
How a simulator run is set up: its modes (L{MODES}), the fault mixes it
can draw from (L{SCENARIOS}; L{replichat.testing.nemesis} describes every
kind) and L{Settings}, the knobs of one run.
"""

from __future__ import annotations

import random

from attrs import evolve, frozen

MODES = ("safety", "liveness")

#: Fault mixes: each scenario's fault kinds and how often the nemesis
#: picks each (relative weights).  Every kind is described in
#: L{replichat.testing.nemesis}.
SCENARIOS: dict[str, dict[str, int]] = {
    "mixed": {
        "crash": 2, "crash-leader": 2, "crash-at-sync": 2, "crash-soon-after-sync": 1,
        "crash-after-ack": 1, "full-outage": 1, "partition": 2, "one-way": 1, "bridge": 1,
        "reset": 2, "client-reset": 1, "pause": 2, "slow-fsync": 2, "slow-net": 1,
    },
    "crash": {
        "crash": 3, "crash-leader": 3, "crash-at-sync": 4, "crash-soon-after-sync": 3,
        "crash-after-ack": 3, "full-outage": 2, "client-reset": 1, "reset": 1,
    },
    # Crashes at every point of the commit path, for the planted bugs.
    "commit-path": {
        "crash-after-ack": 4, "crash-soon-after-sync": 4, "crash-at-sync": 3, "crash-leader": 1,
    },
    "partition": {
        "partition": 4, "one-way": 3, "bridge": 2, "reset": 2, "crash-leader": 1, "pause": 1,
    },
    "network": {
        "reset": 3, "client-reset": 2, "pause": 3, "slow-fsync": 3, "slow-net": 3,
        "crash-soon-after-sync": 1,
    },
}

#: Every fault kind.
FAULTS = frozenset(kind for weights in SCENARIOS.values() for kind in weights)

#: Faults that can make a running server look dead to its peers, so that
#: each side of the misunderstanding may commit alone: the design then
#: cuts the losing side's committed entries and re-proposes them
#: (L{replichat.merge}).  Without any of them (crashes only: a dead server's
#: port refuses), a committed entry must never be cut, which the simulator
#: checks on top of the checker
#: (L{replichat.testing.sim.Simulation.check_never_cut}).
SPLITTING = frozenset({"partition", "one-way", "bridge", "pause", "slow-fsync"})


@frozen
class Settings:
    """
    The knobs of a run; L{None} means "drawn from the seed".

    @ivar ops: operations the clients start in all (the liveness probe and
        session restores come on top).
    @ivar faulty: simulated seconds of the faulty phase.
    @ivar quiet: at most this long after the heal for clients to finish and
        the servers to converge.
    @ivar progress: in liveness mode, a write must commit within this long
        after the heal.
    @ivar snapshot_every: entries between the servers' snapshots (and log
        compaction); the default takes none in a run.
    """

    mode: str = "safety"
    scenario: str | None = None
    servers: int | None = None
    clients: int = 5
    ops: int = 120
    faulty: float = 8.0
    quiet: float = 25.0
    progress: float = 10.0
    snapshot_every: int = 100_000

    def for_seed(self, seed: int) -> Settings:
        """
        These settings with every choice left to the seed made.
        """
        pick = random.Random("replichat-sim-settings:%d" % (seed,))
        mode = MODES[seed % 2] if self.mode == "both" else self.mode
        scenario = self.scenario or pick.choice(sorted(SCENARIOS))
        servers = self.servers or pick.choice((3, 3, 3, 3, 3, 3, 4, 5))
        return evolve(self, mode=mode, scenario=scenario, servers=servers)
