# -*- test-case-name: tests.test_chaos -*-
"""
The layout of a chaos run and its server processes: L{ChaosCluster} picks
the servers' addresses (127.0.0.1, .2, ...), writes their shared config and
peer secret into the work directory, adds one fault-proxy listener per
directed link, and starts each server (L{ChaosCluster.spawn}) through
L{replichat.testing.chaosserve.serve_node}; L{ServerProcess} is one server
and its process.

Processes are only ever signalled by the PIDs of their own process groups.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time

import attrs
import yaml

from replichat.testing.chaosserve import PARENT_ENV, PLANT_ENV, ROUTES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that nothing listens on right now (the kernel's
    choice, as the tests make, so runs and tests do not collide).
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@attrs.define(eq=False)
class ServerProcess:
    """
    One server of the run and its process, if it has one.

    @ivar expected_exit: set when the driver signalled it to die, so an
        exit is not reported as a crash.
    @ivar ready: its client port has answered since it was last started.
    """

    node: int
    host: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    process: subprocess.Popen | None = None
    paused: bool = False
    expected_exit: bool = False
    ready: bool = False
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        """
        Signal the server's process group (a snapshot child forked by the
        server goes with it).
        """
        if self.running:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass


class ChaosCluster:
    """
    The servers of a run, their config, and the proxy links between them.

    @param directory: the work directory (created).
    @param proxy: a L{replichat.testing.proxy.FaultProxy}.
    """

    def __init__(self, directory: str, size: int, proxy, settings: dict,
                 plant: tuple = ()) -> None:
        self.directory = directory
        self.proxy = proxy
        self.plant = plant
        self.servers: dict[int, ServerProcess] = {}
        for i in range(1, size + 1):
            host = "127.0.0.%d" % (i,)
            client_port = free_port(host)
            peer_port = free_port(host)
            while peer_port == client_port:
                peer_port = free_port(host)
            self.servers[i] = ServerProcess(
                i, host, client_port, peer_port,
                data_dir=os.path.join(directory, "node-%d" % (i,)),
                log_path=os.path.join(directory, "node-%d.log" % (i,)),
            )
        self.secret_path = os.path.join(directory, "peer-secret")
        with open(self.secret_path, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(self.secret_path, 0o600)
        self.config_path = os.path.join(directory, "cluster.yaml")
        document = {
            "nodes": {
                i: {"host": s.host, "client_port": s.client_port, "peer_port": s.peer_port}
                for i, s in self.servers.items()
            },
            "data_dir": os.path.join(directory, "node-{node}"),
            "secret_file": self.secret_path,
            **settings,
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(document, f)
        # One proxy listener per directed link, on the target's address.
        self.routes: dict[int, dict] = {i: {} for i in self.servers}
        for s, source in self.servers.items():
            for t, target in self.servers.items():
                if s == t:
                    continue
                port = proxy.add_link(s, t, target.host, (target.host, target.peer_port),
                                      source_host=source.host)
                self.routes[s]["%s:%d" % (target.host, target.peer_port)] = [target.host, port]

    def __getitem__(self, node: int) -> ServerProcess:
        return self.servers[node]

    def spawn(self, node: int) -> None:
        """
        Start a server's process (it is marked ready once its client port
        answers, see L{replichat.testing.chaoscontrol.ServerControl.watch}).
        """
        server = self.servers[node]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        env[ROUTES_ENV] = json.dumps(self.routes[node])
        env[PARENT_ENV] = str(os.getpid())
        env[PLANT_ENV] = ",".join(self.plant)
        launch = ("import sys; from replichat.testing.chaosserve import serve_node; "
                  "serve_node(sys.argv[1:])")
        with open(server.log_path, "ab") as log:
            log.write(("==== chaos: start %d of node %d at %.3f ====\n"
                       % (server.starts + 1, node, time.time())).encode())
            log.flush()
            server.process = subprocess.Popen(
                [sys.executable, "-c", launch, "-n", "--pidfile=", "replichat",
                 "--config", self.config_path, "--node", str(node)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.directory, start_new_session=True,
            )
        server.starts += 1
        server.paused = False
        server.expected_exit = False
        server.ready = False

    def kill_all(self) -> None:
        """
        SIGKILL every server's process group and reap it (the cleanup of
        last resort: bounded, by PID).
        """
        for server in self.servers.values():
            if server.process is None:
                continue
            server.expected_exit = True
            try:
                # The group even if its leader is gone: a snapshot child
                # the server forked may still run.
                os.killpg(server.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def tail(self, node: int, lines: int = 30) -> str:
        """
        The last C{lines} lines of a server's log, or C{""} if it has none.
        """
        try:
            with open(self.servers[node].log_path, encoding="utf-8", errors="replace") as f:
                return "".join(collections.deque(f, lines))
        except FileNotFoundError:
            return ""
