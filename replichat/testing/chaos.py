# -*- test-case-name: tests.test_chaos -*-
"""
C{bin/chaos}: real servers, real faults, then the history checker.

    bin/chaos --duration S --seed N [--clients C] [--dir DIR] [--keep]

starts three C{twistd replichat} servers on 127.0.0.1, .2 and .3 (fresh
data directories under a work directory), runs C{C} concurrent clients
against them for C{S} seconds while a seeded I{nemesis} SIGKILLs and
restarts servers, SIGSTOPs and SIGCONTs them, and cuts, one-way cuts,
delays and heals the links between them; then it heals everything,
requires the cluster to take a write and converge, stops the servers with
SIGTERM, loads each data directory offline into a
L{replichat.testing.history.Replica} and runs
L{replichat.testing.history.check} on the recorded history.  It prints a
summary and exits 1 on any anomaly (2 if the run itself failed), keeping
the work directory (history, fault log, every attempt and the server that
answered it, server logs, data) and printing its path.

How the network is cut.  Every byte between two servers goes through a
L{replichat.testing.proxy.FaultProxy} in this process, one listener per
directed link.  The servers' config is the real one, the same for all (the
addresses of the members are replicated state in the log, so a per-server
file could not route them); instead each server process is started through
L{replichat.testing.chaosserve.serve_node}, which makes that process's
outgoing peer connections (dials and probes) to another server's real peer
address go to the proxy's listener for that link.  Clients use the real
client ports.

This module is the command (L{parse_args}, L{main}); the parts of a run,
in the order a run uses them, are:

  - L{replichat.testing.chaosservers}: the layout (ports, config, proxy
    links) and the server processes;
  - L{replichat.testing.chaosserve}: what runs inside each server process;
  - L{replichat.testing.chaosdriver}: the run from start to end;
  - L{replichat.testing.chaoscontrol}: faults and their undoing, and the
    watch on the processes;
  - L{replichat.testing.chaosrecord}: the faults, notes and anomalies seen;
  - L{replichat.testing.chaosconnection}, L{replichat.testing.chaosclient}
    and L{replichat.testing.chaosworkload}: the recording clients;
  - L{replichat.testing.chaosfaults}: the nemesis's fault schedule;
  - L{replichat.testing.chaosconverge}: waiting for the healed servers to
    agree;
  - L{replichat.testing.chaosoffline}: the data directories, read offline;
  - L{replichat.testing.chaossummary}: the summary and the files kept.

Everything is bounded: each wait has a deadline, the servers are stopped by
the PIDs of their process groups in a C{finally} (and die with the driver:
they ask the kernel for SIGKILL when it exits).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import traceback

from twisted.internet.defer import Deferred

from replichat import failpoints
from replichat.testing.chaosclient import WRITE_DEADLINE
from replichat.testing.chaoscontrol import START_TIMEOUT, STOP_TIMEOUT
from replichat.testing.chaosdriver import ChaosDriver


def parse_args(argv: list[str]) -> argparse.Namespace:
    """
    The options of a run, from the command line C{argv}; a seed is drawn
    if none is given.
    """
    parser = argparse.ArgumentParser(
        prog="chaos",
        description="Run real replichat servers under random faults and check the history.",
    )
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of workload and faults (default 30)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the fault schedule and the workload (default: random)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--servers", type=int, default=3, help="servers (default 3)")
    parser.add_argument("--dir", dest="directory", default=None,
                        help="work directory (default: a new one under $TMPDIR)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory even when the run is clean")
    parser.add_argument("--summary", default=None, help="also write the JSON summary here")
    parser.add_argument("--final-timeout", type=float, default=30.0,
                        help="seconds the healed cluster has to take a write, and then to "
                             "converge (default 30 each)")
    parser.add_argument("--plant", action="append", default=[], metavar="BUG",
                        help="turn on a planted bug (replichat.failpoints) in the servers, "
                             "to see the run catch it; may be repeated")
    parser.add_argument("--heartbeat", type=float, default=0.1,
                        help="the servers' heartbeat interval (default 0.1)")
    parser.add_argument("--failure-timeout", type=float, default=0.5,
                        help="the servers' failure timeout (default 0.5)")
    parser.add_argument("--snapshot-every", type=int, default=100_000,
                        help="entries between snapshots (>= 100; default 100000, none in a "
                             "short run: the checker sees the whole log; 500 stresses "
                             "compaction and snapshot catch-up, checked from the oldest "
                             "snapshot on)")
    options = parser.parse_args(argv)
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1, 10**6)
    if not 2 <= options.servers <= 9:
        parser.error("--servers must be 2-9")
    if options.duration <= 0 or options.clients < 1:
        parser.error("--duration and --clients must be positive")
    if options.snapshot_every < 100:
        parser.error("--snapshot-every must be at least 100")
    for name in options.plant:
        if name not in failpoints.ALL:
            parser.error("--plant: no planted bug is named %r (there are: %s)"
                         % (name, ", ".join(sorted(failpoints.ALL))))
    return options


def main(argv: list[str] | None = None) -> None:
    """
    Run one chaos run in the reactor and exit with its status (2 if it was
    interrupted: a signal, or the overall time limit).
    """
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    options = parse_args(sys.argv[1:] if argv is None else argv)
    created = options.directory is None
    if created:
        options.directory = tempfile.mkdtemp(prefix="replichat-chaos-%d-" % (options.seed,))
    else:
        os.makedirs(options.directory, exist_ok=True)
    options.directory = os.path.abspath(options.directory)
    # Warnings and errors only: every connection would log twice.
    log = open(os.path.join(options.directory, "driver.log"), "a")
    observer = FilteringLogObserver(
        textFileLogObserver(log), [LogLevelFilterPredicate(LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    outcome = {"status": 2, "driver": None}

    def overtime() -> None:
        print("chaos: the run overran its time limit of %.0f s; stopping" % (limit,), flush=True)
        reactor.stop()

    async def run() -> None:
        try:
            driver = outcome["driver"] = ChaosDriver(options, reactor)
            outcome["status"] = await driver.run()
        except Exception:
            traceback.print_exc()
        finally:
            if timer.active():
                timer.cancel()
            if reactor.running:
                reactor.stop()

    def cleanup() -> None:
        # Before the reactor stops, however it stops (the end of the run, a
        # signal, the time limit): nothing may outlive the driver.
        if outcome["driver"] is not None:
            outcome["driver"].cleanup()

    # Every phase has its own bound; this is the bound of the whole.
    limit = (options.duration + WRITE_DEADLINE + 2 * START_TIMEOUT
             + 2 * options.final_timeout + STOP_TIMEOUT + 60)
    timer = reactor.callLater(limit, overtime)
    reactor.addSystemEventTrigger("before", "shutdown", cleanup)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()))
    try:
        reactor.run()
    finally:
        cleanup()
        status = outcome["status"]
        if status == 0 and created and not options.keep:
            shutil.rmtree(options.directory, ignore_errors=True)
        else:
            print("chaos: work directory kept: %s" % (options.directory,), flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
