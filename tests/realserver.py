"""
Running real C{twistd replichat} processes on 127.0.0.1 for the tests that
only the real thing can show: start-up, SIGKILL, files on disk.

Everything is bounded: each wait has a deadline, each process is stopped by
its PID in the test's cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

from replichat.testing.chaosservers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class LineClient:
    """
    A blocking JSON-lines client, with a timeout on every read.
    """

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rwb")
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, op: str, **args: object) -> dict:
        self.next_id += 1
        self.file.write(json.dumps({"id": self.next_id, "op": op, **args}).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            answer = json.loads(line)
            if "event" in answer:
                self.events.append(answer)
            elif answer.get("id") == self.next_id:
                return answer

    def ok(self, op: str, **args: object) -> dict:
        answer = self.call(op, **args)
        if not answer["ok"]:
            raise AssertionError("%s failed: %r" % (op, answer))
        return answer["result"]

    def close(self) -> None:
        try:
            self.file.close()  # flushes what is buffered: the peer may be gone
        except OSError:
            pass
        self.sock.close()


class RealServer:
    """
    One C{twistd -n replichat} process with its own config and data dir.
    """

    #: The address its client port listens on.
    host = "127.0.0.1"
    #: More command-line arguments for C{twistd replichat}, such as C{--join}.
    extra_args: tuple = ()

    def __init__(self, directory: str, node_id: int = 1, **extra: object) -> None:
        self.directory = directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.node_id = node_id
        self.port = free_port()
        self.config_path = os.path.join(directory, "replichat.yaml")
        self.data_dir = os.path.join(directory, "node-%d" % (node_id,))
        self.log_path = os.path.join(directory, "twistd.log")
        document = {
            "nodes": {node_id: {"host": "127.0.0.1", "client_port": self.port,
                                "peer_port": free_port()}},
            "data_dir": os.path.join(directory, "node-{node}"),
            **extra,
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(document, f)
        self.process: subprocess.Popen | None = None

    def spawn(self, env: dict | None = None) -> subprocess.Popen:
        environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "replichat", "--config", self.config_path,
             "--node", str(self.node_id), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=self.directory,
        )
        log.close()
        return self.process

    def start(self, timeout: float = 20.0, env: dict | None = None) -> "RealServer":
        """
        Start and wait until the client port answers C{hello}.
        """
        self.spawn(env)
        why = self.wait_serving(time.monotonic() + timeout)
        if why == "exited":
            raise AssertionError("server exited with %s:\n%s"
                                 % (self.process.returncode, self.output()))
        if why == "timeout":
            self.stop()
            raise AssertionError("server did not start within %ss:\n%s"
                                 % (timeout, self.output()))
        return self

    def wait_serving(self, deadline: float, hello: bool = True,
                     pause: float = 0.05) -> str | None:
        """
        Wait until the spawned process's client port takes a connection
        and, if C{hello}, answers C{hello} on it (an error answer raises
        L{AssertionError}), trying again every C{pause} seconds until
        C{deadline} (on the L{time.monotonic} clock).

        @return: L{None} once it does; C{"exited"} if the process exited
            first, C{"timeout"} if the deadline passed first.
        """
        while True:
            if self.process.poll() is not None:
                return "exited"
            try:
                client = self.client(timeout=2)
            except OSError:
                pass
            else:
                try:
                    if hello:
                        client.ok("hello")
                finally:
                    client.close()
                return None
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(pause)

    def client(self, timeout: float = 10.0) -> LineClient:
        return LineClient(self.port, timeout=timeout, host=self.host)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """
        Signal the process and wait (bounded) for it to exit.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=20)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout=timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        """
        The last lines the process logged.
        """
        return "\n".join(self.output().splitlines()[-lines:])

    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def files(self, sub: str) -> list[str]:
        path = os.path.join(self.data_dir, sub)
        return sorted(os.path.join(path, name) for name in os.listdir(path))


def free_ports_on(hosts: list[str], count: int = 2) -> list[int]:
    """
    C{count} distinct TCP ports that nothing listens on right now on any of
    C{hosts}, so that every server of a cluster on one machine can use the
    same ports on its own address, as on separate hosts.
    """
    ports: list[int] = []
    for _ in range(200):
        if len(ports) == count:
            return ports
        port = free_port()
        if port in ports:
            continue
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        ports.append(port)
    raise AssertionError("no port free on all of %s" % (hosts,))


class ClusterServer(RealServer):
    """
    One server of a L{RealCluster}: the cluster writes the config.
    """

    def __init__(self, directory: str, node_id: int, host: str, port: int,
                 config_path: str) -> None:
        self.directory = directory
        self.node_id = node_id
        self.host = host
        self.port = port
        self.config_path = config_path
        self.data_dir = os.path.join(directory, "node-%d" % (node_id,))
        self.log_path = os.path.join(directory, "node-%d.log" % (node_id,))
        self.process = None


class RealCluster:
    """
    C{size} real servers on 127.0.0.1, 127.0.0.2, ... with the same client
    port and the same peer port on each address, one shared config (with a
    random peer secret, heartbeat 0.1 s, failure timeout 0.5 s) and data
    directories under C{directory}.

    C{spare} more servers (ids C{size+1}, ...) are not in the cluster's
    config; each has its own config listing the cluster and itself, to be
    started with C{--join}.

    Call L{stop_all} in the test's cleanup.
    """

    def __init__(self, directory: str, size: int = 3, spare: int = 0,
                 **extra: object) -> None:
        self.directory = directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        ids = range(1, size + spare + 1)
        self.hosts = {i: "127.0.0.%d" % (i,) for i in ids}
        self.client_port, self.peer_port = free_ports_on(list(self.hosts.values()), 2)
        self.secret_path = os.path.join(directory, "peer-secret")
        with open(self.secret_path, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(self.secret_path, 0o600)
        nodes = {
            i: {"host": self.hosts[i], "client_port": self.client_port,
                "peer_port": self.peer_port}
            for i in ids
        }
        base = {
            "data_dir": os.path.join(directory, "node-{node}"),
            "timing": {"heartbeat_interval": 0.1, "failure_timeout": 0.5},
            "secret_file": self.secret_path,
            **extra,
        }
        self.config_path = os.path.join(directory, "cluster.yaml")
        with open(self.config_path, "w") as f:
            yaml.safe_dump({**base, "nodes": {i: nodes[i] for i in range(1, size + 1)}}, f)
        self.servers: dict[int, ClusterServer] = {}
        for i in ids:
            config_path = self.config_path
            if i > size:
                config_path = os.path.join(directory, "node-%d.yaml" % (i,))
                with open(config_path, "w") as f:
                    yaml.safe_dump({**base, "nodes": {j: nodes[j] for j in range(1, i + 1)}}, f)
            self.servers[i] = ClusterServer(directory, i, self.hosts[i], self.client_port,
                                            config_path)

    def __getitem__(self, node_id: int) -> ClusterServer:
        return self.servers[node_id]

    # -- processes -------------------------------------------------------------

    def start(self, *ids: int, join: int | None = None, timeout: float = 20.0) -> None:
        """
        Start the given servers (all of the cluster's when none is given),
        together, and wait until each one's client port takes a connection
        (not for an answer: see L{RealServer.wait_serving}).  C{join}: the
        id of a member whose peer address to pass as C{--join}.
        """
        ids = ids or tuple(i for i in self.servers if self.servers[i].config_path
                           == self.config_path)
        for i in ids:
            server = self.servers[i]
            server.extra_args = (
                ("--join", "%s:%d" % (self.hosts[join], self.peer_port)) if join else ()
            )
            server.spawn()
        deadline = time.monotonic() + timeout
        for i in ids:
            server = self.servers[i]
            why = server.wait_serving(deadline, hello=False, pause=0.02)
            if why == "exited":
                raise AssertionError("server %d exited with %s\n%s"
                                     % (i, server.process.returncode, self.logs()))
            if why == "timeout":
                raise AssertionError("server %d did not listen within %ss\n%s"
                                     % (i, timeout, self.logs()))

    def kill(self, node_id: int) -> None:
        """
        SIGKILL a server and reap it.
        """
        self.servers[node_id].kill(signal.SIGKILL)

    def stop(self, node_id: int, timeout: float = 20.0) -> int:
        """
        SIGTERM a server (a clean stop) and wait for it to exit.
        """
        server = self.servers[node_id]
        server.process.send_signal(signal.SIGTERM)
        try:
            return server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.kill(signal.SIGKILL)
            raise AssertionError("server %d ignored SIGTERM for %ss\n%s"
                                 % (node_id, timeout, self.logs()))

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.kill(signal.SIGKILL)

    def running(self) -> list[int]:
        return [i for i, server in self.servers.items() if server.running]

    def logs(self, lines: int = 40) -> str:
        """
        The tail of every server's log that has one, for failure messages.
        """
        parts = []
        for i, server in self.servers.items():
            if server.process is None and not os.path.exists(server.log_path):
                continue
            state = "running" if server.running else "exited %s" % (
                server.process.returncode if server.process else "?",)
            parts.append("---- node %d (%s), last %d log lines ----\n%s"
                         % (i, state, lines, server.tail(lines)))
        return "\n".join(parts)

    # -- asking the servers ------------------------------------------------------

    def ask(self, node_id: int, op: str, timeout: float = 2.0, **args: object) -> dict | None:
        """
        One request on a fresh connection; the answer, or L{None} if the
        server cannot be reached.
        """
        try:
            client = self.servers[node_id].client(timeout=timeout)
        except OSError:
            return None
        try:
            return client.call(op, **args)
        except (OSError, ValueError):
            return None
        finally:
            client.close()

    def accepts_writes(self, node_id: int) -> bool:
        """
        Whether the server would take a write now: a C{logout} without a
        login is refused with C{not_logged_in} only by a serving leader
        (others answer C{not_leader} or C{unavailable}), and changes nothing.
        """
        answer = self.ask(node_id, "logout")
        return answer is not None and answer["error"]["code"] == "not_logged_in"

    def leader(self) -> int | None:
        """
        The id of the running server whose role is leader and that accepts
        writes, if there is one.
        """
        for i in self.running():
            answer = self.ask(i, "hello")
            if answer is not None and answer.get("ok") and answer["result"]["role"] == "leader":
                if self.accepts_writes(i):
                    return i
        return None

    def wait_for_leader(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader()
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise AssertionError("no leader within %ss\n%s" % (timeout, self.logs()))
            time.sleep(0.05)

    def status(self, node_id: int) -> dict | None:
        """
        The server's own row of its C{cluster} answer.
        """
        answer = self.ask(node_id, "cluster")
        if answer is None or not answer.get("ok"):
            return None
        for row in answer["result"]["nodes"]:
            if row["id"] == node_id:
                return row
        return None

    def wait_converged(self, ids: list[int] | None = None, timeout: float = 10.0) -> int:
        """
        Wait until the given running servers (all running ones by default)
        have the same last index and have applied all of it; return it.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = {i: self.status(i) for i in (ids or self.running())}
            indexes = {(r["last_index"], r["commit_index"]) if r else None
                       for r in rows.values()}
            if len(indexes) == 1:
                (pair,) = indexes
                if pair is not None and pair[0] == pair[1]:
                    return pair[0]
            if time.monotonic() > deadline:
                raise AssertionError("not converged within %ss: %r\n%s"
                                     % (timeout, rows, self.logs()))
            time.sleep(0.05)


class ClusterSession:
    """
    A blocking client of a L{RealCluster} that does what a careful client
    does: it sends writes to the leader, follows C{not_leader}, and retries
    a write with the same rid after C{unavailable} or a lost connection.
    """

    def __init__(self, cluster: RealCluster, token: str | None = None) -> None:
        self.cluster = cluster
        self.token = token
        self.node: int | None = None
        self.client: LineClient | None = None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self.node = None

    def connect(self, node_id: int) -> LineClient:
        self.close()
        client = self.cluster[node_id].client(timeout=5)
        if self.token is not None:
            client.ok("resume", token=self.token)
        self.node, self.client = node_id, client
        return client

    def write(self, op: str, timeout: float = 10.0, **args: object) -> dict:
        """
        The result of a mutating op, once some leader acknowledged it.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if self.client is None:
                    leader = self.cluster.leader()
                    if leader is None:
                        time.sleep(0.05)
                        continue
                    self.connect(leader)
                answer = self.client.call(op, **args)
            except (OSError, ValueError, AssertionError) as error:
                last = error
                self.close()
                time.sleep(0.05)
                continue
            if answer["ok"]:
                return answer["result"]
            last = answer
            code = answer["error"]["code"]
            if code == "not_leader":
                leader = answer["error"].get("leader")
                self.close()
                if leader and leader["id"] in self.cluster.running():
                    try:
                        self.connect(leader["id"])
                    except (OSError, ValueError, AssertionError):
                        self.close()
            elif code == "unavailable":
                self.close()
                time.sleep(0.05)
            else:
                raise AssertionError("%s refused: %r" % (op, answer))
        raise AssertionError("%s %r not acknowledged within %ss (last: %r)\n%s"
                             % (op, args, timeout, last, self.cluster.logs()))
