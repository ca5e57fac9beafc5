# -*- test-case-name: tests.test_simulate -*-
"""
C{bin/simulate}: run the deterministic cluster simulator
(L{replichat.testing.sim}) over many seeds, or replay one, and print a
summary (L{replichat.testing.simresults.Summary}); see L{main}.
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import nullcontext

from twisted.logger import globalLogBeginner

from replichat import failpoints
from replichat.testing.sim import run_seed
from replichat.testing.simresults import Summary
from replichat.testing.simsettings import MODES, SCENARIOS, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bin/simulate",
        description="Run replichat's deterministic cluster simulator over many seeds.",
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--trace", action="store_true", help="print the whole trace")
    parser.add_argument("--mode", choices=MODES + ("both",), default="both",
                        help="safety, liveness, or both (alternating by seed; default)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS),
                        help="fault mix (default: drawn from each seed)")
    parser.add_argument("--servers", type=int, help="servers (default: drawn, mostly 3)")
    defaults = Settings()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--ops", type=int, default=defaults.ops,
                        help="operations the clients start per seed (default %(default)s)")
    parser.add_argument("--faulty", type=float, default=defaults.faulty,
                        help="simulated seconds of faults per seed (default %(default)s)")
    parser.add_argument("--snapshot-every", type=int, default=defaults.snapshot_every,
                        help="entries between snapshots and compaction (default %(default)s:"
                        " none in a run)")
    parser.add_argument("--plant", choices=sorted(failpoints.ALL),
                        help="turn on a planted bug (replichat.failpoints) for the run")
    parser.add_argument("--history", metavar="PATH",
                        help="with --seed: write the history there (JSON lines)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    C{bin/simulate}: run seeds, print a summary; exit status 1 if any seed
    found an anomaly.
    """
    options = _parser().parse_args(argv)
    # Piped into head or less: stop quietly when the reader goes away.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # What matters of the servers' log is captured per run; without an
    # observer Twisted would print every critical event to stderr.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    settings = Settings(mode=options.mode, scenario=options.scenario, servers=options.servers,
                        clients=options.clients, ops=options.ops, faulty=options.faulty,
                        snapshot_every=options.snapshot_every)
    planted = failpoints.planted(options.plant) if options.plant else nullcontext()
    with planted:
        if options.seed is not None:
            return _one(options, settings)
        return _many(options, settings)


def _one(options, settings: Settings) -> int:
    result = run_seed(options.seed, settings)
    if options.trace:
        print("\n".join(result.trace))
    if options.history:
        result.history.dump(options.history)
    summary = Summary()
    summary.add(result)
    print(summary.describe())
    if result.anomalies:
        print()
        print(result.describe())
    return 1 if result.anomalies else 0


def _many(options, settings: Settings) -> int:
    summary = Summary()
    for seed in range(options.start, options.start + options.seeds):
        result = run_seed(seed, settings)
        summary.add(result)
        if result.anomalies:
            print(result.describe(), file=sys.stdout)
            print(file=sys.stdout)
        done = seed - options.start + 1
        if done % 100 == 0 or done == options.seeds:
            print("%d/%d seeds, %d with anomalies, %.0fs" % (
                done, options.seeds, len(summary.failed), summary.wall), file=sys.stderr)
    print(summary.describe())
    return 1 if summary.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
