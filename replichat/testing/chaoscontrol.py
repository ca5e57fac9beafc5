# -*- test-case-name: tests.test_chaos -*-
"""
The chaos driver's hands on the servers and the links between them:
L{ServerControl} injects and undoes each fault (SIGKILL and restart,
SIGSTOP and SIGCONT, proxy cuts and heals), recording it in the run's
L{replichat.testing.chaosrecord.RunRecord}; watches the processes every
tick (a server that exits on its own is restarted, one whose client port
answers is ready); and stops them all with SIGTERM at the end.
"""

from __future__ import annotations

import signal
import time
import traceback

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater

from replichat.testing.chaosconnection import client_endpoint

#: Seconds for the servers to listen after they are started, and to exit
#: after SIGTERM.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


class ServerControl:
    """
    Faults and their undoing, on the servers of a
    L{replichat.testing.chaosservers.ChaosCluster} and on its
    L{replichat.testing.proxy.FaultProxy}.

    @ivar final_phase: set once the workload is over; a server that exits
        on its own is then not restarted.
    """

    def __init__(self, cluster, proxy, record, reactor) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.record = record
        self.reactor = reactor
        self.final_phase = False
        self.watcher = None
        self._probing: set[int] = set()

    # -- faults, as the nemesis and the final phase call them ---------------------

    def unavailable(self) -> set[int]:
        """
        The servers that are down, restarting or paused.
        """
        return {n for n, s in self.cluster.servers.items()
                if not s.running or not s.ready or s.paused}

    def kill(self, node: int) -> None:
        server = self.cluster[node]
        server.expected_exit = True
        server.ready = False
        server.signal(signal.SIGKILL)
        server.paused = False
        self.proxy.target_down(node)
        self.record.fault("kill", node=node)

    def restart(self, node: int, attempts: int = 100) -> None:
        """
        Start a server again once its old process is reaped.
        """
        server = self.cluster[node]
        if server.running:
            if server.expected_exit and attempts > 0:
                self.reactor.callLater(0.05, self.restart, node, attempts - 1)
            return
        self.cluster.spawn(node)
        self.record.fault("restart", node=node)

    def pause(self, node: int) -> None:
        server = self.cluster[node]
        server.signal(signal.SIGSTOP)
        server.paused = True
        self.record.fault("pause", node=node)

    def resume(self, node: int) -> None:
        server = self.cluster[node]
        if server.paused:
            server.signal(signal.SIGCONT)
            server.paused = False
            self.record.fault("resume", node=node)

    def network_fault(self, kind: str, apply, **detail) -> None:
        """
        Apply a network fault of C{kind}: C{apply(proxy)} does it.
        """
        apply(self.proxy)
        self.record.fault(kind, **detail)

    def heal(self) -> None:
        self.proxy.heal()
        self.record.fault("heal")

    def revive_all(self) -> None:
        """
        Undo every fault at once: heal the links (not counted as a heal),
        continue the paused servers and start the stopped ones.
        """
        self.proxy.heal()
        for node, server in self.cluster.servers.items():
            if server.paused:
                self.resume(node)
            if not server.running:
                self.cluster.spawn(node)
                self.record.fault("restart", node=node)

    # -- watching the processes ---------------------------------------------------

    def start_watching(self, interval: float = 0.05) -> None:
        """
        Call L{watch} every C{interval} seconds from now on.
        """
        self.watcher = LoopingCall(self.watch)
        self.watcher.clock = self.reactor
        self.watcher.start(interval)

    def stop_watching(self) -> None:
        if self.watcher is not None and self.watcher.running:
            self.watcher.stop()

    def watch(self) -> None:
        """
        Every tick: notice servers that exited on their own (restarted a
        second later, as systemd would) and servers that became ready
        (their client port answers: then the proxy accepts peers for them).
        """
        try:
            for node, server in self.cluster.servers.items():
                if server.process is None:
                    continue
                code = server.process.poll()
                if code is not None:
                    if not server.expected_exit:
                        server.expected_exit = True
                        server.ready = False
                        self.proxy.target_down(node)
                        tail = self.cluster.tail(node, 8).strip().splitlines()
                        self.record.fault("exit", node=node, code=code, log=tail[-8:])
                        if not self.final_phase:
                            self.reactor.callLater(1.0, self.restart, node)
                    continue
                if not server.ready and node not in self._probing and not server.paused:
                    self._probing.add(node)
                    Deferred.fromCoroutine(self._probe(node))
        except Exception:
            self.record.harness_errors.append(traceback.format_exc())

    async def _probe(self, node: int) -> None:
        server = self.cluster[node]
        process = server.process
        try:
            endpoint = client_endpoint(self.reactor, server)
            protocol = await connectProtocol(endpoint, Protocol())
            protocol.transport.abortConnection()
            if server.process is process and server.running and not server.expected_exit:
                server.ready = True
                self.proxy.target_up(node)
        except Exception:
            pass
        finally:
            self._probing.discard(node)

    async def wait_ready(self, timeout: float) -> bool:
        """
        Wait until every server is ready; C{False} if that took longer than
        C{timeout} seconds.
        """
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(s.ready for s in self.cluster.servers.values()):
                return True
            await deferLater(self.reactor, 0.05)
        return False

    # -- the end -------------------------------------------------------------------

    async def stop_all(self) -> None:
        """
        SIGTERM every server (a clean stop) and wait for them to exit; one
        that does not within C{STOP_TIMEOUT} is killed and reported.
        """
        for server in self.cluster.servers.values():
            server.expected_exit = True
            server.signal(signal.SIGCONT)
            server.signal(signal.SIGTERM)
        deadline = time.time() + STOP_TIMEOUT
        while time.time() < deadline and any(s.running for s in self.cluster.servers.values()):
            await deferLater(self.reactor, 0.05)
        for node, server in self.cluster.servers.items():
            if server.running:
                self.record.anomaly("stop-timeout", "node %d ignored SIGTERM for %ss"
                                    % (node, STOP_TIMEOUT))
                server.signal(signal.SIGKILL)
                server.process.wait(timeout=10)
            elif server.process and server.process.returncode not in (0, -signal.SIGTERM):
                # (twistd ends by re-raising the signal that stopped it.)
                self.record.notes.append("node %d exited with status %s after SIGTERM"
                                         % (node, server.process.returncode))
