# -*- test-case-name: tests.test_chaos -*-
"""
One chaos run from start to end: L{ChaosDriver} starts the servers behind
the fault proxy, runs the workload clients and the nemesis together, then
the final phase (heal everything, require a write and convergence, stop
the servers, read their data directories offline), and checks the
recorded history.
"""

from __future__ import annotations

import json
import random
import time

from twisted.internet.defer import Deferred

from replichat.testing.chaosclient import RecordingClient, Shared
from replichat.testing.chaoscontrol import START_TIMEOUT, ServerControl
from replichat.testing.chaosconverge import converge
from replichat.testing.chaosfaults import Nemesis
from replichat.testing.chaosoffline import load_replicas
from replichat.testing.chaosrecord import RunRecord
from replichat.testing.chaosservers import ChaosCluster
from replichat.testing.chaossummary import render_summary, summarize, write_run_files
from replichat.testing.chaosworkload import WorkloadClient
from replichat.testing.history import History, check
from replichat.testing.proxy import FaultProxy


class ChaosDriver:
    """
    One run: the servers, the proxy, the clients, the nemesis, the final
    phase and the check.

    @param options: the run's options (L{replichat.testing.chaos.parse_args}),
        its work directory created.
    @ivar record: the run's L{replichat.testing.chaosrecord.RunRecord}.
    @ivar clients: the workload's clients, and C{extra_clients} the final
        phase's.
    """

    def __init__(self, options, reactor) -> None:
        self.options = options
        self.reactor = reactor
        self.directory = options.directory
        settings = {
            "timing": {"heartbeat_interval": options.heartbeat,
                       "failure_timeout": options.failure_timeout},
            # By default no compaction within a run: the checker then sees
            # every committed entry (it cannot tell, from a snapshot, which
            # earlier entries were re-proposed after a partition).
            # --snapshot-every 500 stresses compaction and snapshot catch-up.
            "snapshot": {"every_entries": options.snapshot_every},
            "log": {"segment_bytes": 256 * 1024},
            # The clients log in far more often than a person would.
            "limits": {"login_attempts_per_minute": 100_000},
        }
        self.proxy = FaultProxy(reactor)
        self.cluster = ChaosCluster(self.directory, options.servers, self.proxy, settings,
                                    plant=tuple(options.plant))
        self.history = History()
        self.shared = Shared()
        self.record = RunRecord()
        self.control = ServerControl(self.cluster, self.proxy, self.record, reactor)
        self.clients: list[WorkloadClient] = []
        self.extra_clients: list[RecordingClient] = []
        self.cleaned = False

    async def run(self) -> int:
        """
        The whole run.

        @return: the exit status: 0 clean, 1 anomalies, 2 the harness failed.
        """
        options = self.options
        self.control.start_watching()
        for node in self.cluster.servers:
            self.cluster.spawn(node)
        if not await self.control.wait_ready(START_TIMEOUT):
            self.record.harness_errors.append(
                "the servers did not start within %ss" % (START_TIMEOUT,))
            return self.finish(converged=False, replicas=[])
        self.record.started = time.time()
        until = self.record.started + options.duration
        rng = random.Random(options.seed)
        self.clients = [
            WorkloadClient("c%d" % (i,), random.Random("%s-c%d" % (options.seed, i)),
                           self.cluster, self.history, self.shared, self.reactor)
            for i in range(1, options.clients + 1)
        ]
        running = [Deferred.fromCoroutine(c.run(until)) for c in self.clients]
        nemesis = Nemesis(rng, self.control, self.shared, options.failure_timeout)
        nemesis.start(until)
        for waiting in running:
            await waiting  # each ends within a write's deadline of `until`
        for client in self.clients:
            self.record.harness_errors.extend(client.errors)
        nemesis.stop()
        return await self.final()

    async def final(self) -> int:
        """
        Heal, continue and restart everything; require a write to succeed
        and the servers to converge; stop them with SIGTERM; check.
        """
        control, record, options = self.control, self.record, self.options
        control.final_phase = True
        control.revive_all()
        if not await control.wait_ready(START_TIMEOUT):
            record.anomaly("not-running", "servers %s did not start again within %ss"
                           % (sorted(control.unavailable()), START_TIMEOUT))
        # Liveness: once healed, the cluster must take a write.
        healed = time.time()
        final = RecordingClient("final", random.Random(options.seed), self.cluster,
                                self.history, self.shared, self.reactor)
        self.extra_clients.append(final)
        password = "final-pw-%d" % (options.seed,)
        status, _ = await final.write(
            "create_account", {"username": "final", "password": password},
            session="never", deadline=options.final_timeout,
        )
        final._drop()
        if status == "ok":
            record.notes.append("a write succeeded %.2f s after the heal"
                                % (time.time() - healed,))
        else:
            record.anomaly("no-progress", "no write acknowledged within %ss of the heal"
                           % (options.final_timeout,))
        index, rows = await converge(self.reactor, self.cluster, options.final_timeout)
        if index is None:
            record.anomaly("not-converged", "servers did not converge within %ss: %s"
                           % (options.final_timeout, rows))
        else:
            record.notes.append("converged at index %d, %.2f s after the heal"
                                % (index, time.time() - healed))
        await control.stop_all()
        for event in record.fault_log:
            if event["kind"] == "exit":
                # Not the nemesis's doing: a crash, or a server stopping
                # itself (its log tail says which).
                record.anomaly("server-exit",
                               "node %d exited on its own with status %s at +%.3f s: %s"
                               % (event["node"], event["code"], event["at"],
                                  " | ".join(event["log"][-3:])))
        replicas, partial = (load_replicas(self.directory, self.cluster, index, record)
                             if index is not None else ([], False))
        return self.finish(converged=index is not None, replicas=replicas, partial=partial)

    def finish(self, converged: bool, replicas: list, partial: bool = False) -> int:
        """
        Check the history, write the files, print the summary.

        @param partial: some replica could not be read at the converged
            index (the check then does not require convergence).
        @return: the exit status: 0 clean, 1 anomalies, 2 the harness failed.
        """
        record = self.record
        checked = False
        report = None
        if replicas and not record.harness_errors:
            partitioned = any(record.faults[k] for k in ("isolate", "bridge", "one-way"))
            # A server paused past the failure timeout can lead stale once
            # the others die: reads are only linearizable without pauses.
            report = check(self.history, replicas, converged=converged and not partial,
                           partitioned=partitioned,
                           linearizable=not (partitioned or record.faults["pause"]))
            record.anomalies.extend(report.anomalies)
            record.notes.extend(report.notes)
            record.notes.append("checker: " + report.summary())
            checked = True
        for link in self.proxy.links.values():
            if link.broken:
                record.harness_errors.append("proxy link %d->%d lost its port %d"
                                             % (link.source, link.target, link.port))
        status = 2 if record.harness_errors or not checked else (1 if record.anomalies else 0)
        summary = summarize(self.options, record, self.history, checked, status)
        write_run_files(self.directory, summary, self.history,
                        self.clients + self.extra_clients, record, report)
        if self.options.summary:
            with open(self.options.summary, "w") as f:
                json.dump(summary, f, indent=1)
        print(render_summary(summary), flush=True)
        return status

    def cleanup(self) -> None:
        """
        Stop watching, close the proxy and SIGKILL whatever still runs (by
        process group): called whatever happened, maybe twice.
        """
        if self.cleaned:
            return
        self.cleaned = True
        self.control.stop_watching()
        for client in self.clients:
            client.stop()
            client._drop()
        try:
            self.proxy.close()
        finally:
            self.cluster.kill_all()
