# -*- test-case-name: tests.test_cluster,tests.test_simulate -*-
"""
A whole replichat cluster in one process, under the import path tests have
long used; the code lives in small modules of L{replichat.testing}:

  - L{SimCluster} and L{Disk}: L{replichat.testing.simcluster} (real nodes
    on in-memory storage, crashes, slow and fatal fsyncs);
  - L{SimNetwork}, L{SimEndpoint} and L{LATENCY}:
    L{replichat.testing.simnet} (a network that behaves like TCP);
  - L{Process}: L{replichat.testing.simprocess} (a server process that
    stops and dies);
  - L{SimClock}: L{replichat.testing.simclock} (the heap clock).
"""

from replichat.testing.simclock import SimClock
from replichat.testing.simcluster import Disk, SimCluster
from replichat.testing.simnet import LATENCY, SimEndpoint, SimNetwork
from replichat.testing.simprocess import Process

__all__ = ["LATENCY", "Disk", "Process", "SimClock", "SimCluster", "SimEndpoint", "SimNetwork"]
