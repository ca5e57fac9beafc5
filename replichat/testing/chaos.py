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
L{serve_node}, which makes that process's outgoing peer connections (dials
and probes) to another server's real peer address go to the proxy's
listener for that link.  Clients use the real client ports.

Parts, in order: the layout of a run (L{ChaosCluster}: ports, configs,
processes), the workload (L{LineConnection}, L{ChaosClient}), the fault
schedule (L{Nemesis}), the final phase and the offline L{load_replica},
and L{main}.

Everything is bounded: each wait has a deadline, the servers are stopped by
the PIDs of their process groups in a C{finally} (and die with the driver:
they ask the kernel for SIGKILL when it exits).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import attrs
import yaml
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The environment variable naming, for a server process, where its peer
#: connections go: C{{"host:port": [proxy_host, proxy_port]}}.
ROUTES_ENV = "REPLICHAT_CHAOS_ROUTES"
#: The driver's pid, so a server started after the driver died exits.
PARENT_ENV = "REPLICHAT_CHAOS_PARENT"
#: Planted bugs (L{replichat.failpoints}) to turn on in the servers,
#: comma-separated: a run must then find anomalies.
PLANT_ENV = "REPLICHAT_CHAOS_PLANT"

#: The ops that only a serving leader takes (an acknowledged one names it).
WRITE_OPS = frozenset(
    {"create_account", "login", "logout", "send", "read", "delete_messages", "delete_account"}
)

#: Usernames the clients draw from: few, so that names collide on purpose.
USERNAMES = ("ann", "bob", "cat", "dan", "eve", "fay")

#: Seconds a client waits for one answer before the outcome is unknown:
#: longer than a failover, short enough that a client stuck on a stopped
#: server soon tries another.
REQUEST_TIMEOUT = 2.0
#: Seconds a client keeps retrying one write (same rid) before giving up.
WRITE_DEADLINE = 10.0
#: Seconds to connect to a server.
CONNECT_TIMEOUT = 1.0

#: Seconds for the servers to listen after they are started, and to exit
#: after SIGTERM.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


# -- the server side: one process --------------------------------------------------


def serve_node(argv: list[str]) -> None:
    """
    Run C{twistd} with C{argv} in this process, with the peer connections
    it makes rerouted as C{$REPLICHAT_CHAOS_ROUTES} says (to the proxy).

    Only where a connection goes changes: the server, its config and its
    log are the real ones.  The hook is L{replichat.peerproto}'s one
    function that makes every peer client endpoint (dials, probes).
    """
    _die_with_parent()
    routes = {key: tuple(value) for key, value in json.loads(os.environ[ROUTES_ENV]).items()}
    from replichat import peerproto

    original = getattr(peerproto, "_client_endpoint", None)
    if original is None:
        raise SystemExit("chaos: replichat.peerproto._client_endpoint is gone; "
                         "serve_node cannot route peer connections")

    def routed(reactor, host, port, *args, **kwargs):
        host, port = routes.get("%s:%d" % (host, port), (host, port))
        return original(reactor, host, port, *args, **kwargs)

    peerproto._client_endpoint = routed
    planted = [name for name in os.environ.get(PLANT_ENV, "").split(",") if name]
    if planted:
        from replichat import failpoints

        failpoints.active.update(planted)
    sys.argv = ["twistd", *argv]
    from twisted.scripts.twistd import run

    run()


def _die_with_parent() -> None:
    """
    Ask Linux to SIGKILL this process when the driver that started it
    exits, however it exits (a driver killed by a test's timeout cannot
    clean up): C{prctl(PR_SET_PDEATHSIG, SIGKILL)}.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the driver's finally is the only cleanup
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        raise SystemExit("chaos: the driver is gone")


# -- the layout of a run ------------------------------------------------------------


def free_port(host: str) -> int:
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
        answers, see L{ChaosDriver.watch}).
        """
        server = self.servers[node]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        env[ROUTES_ENV] = json.dumps(self.routes[node])
        env[PARENT_ENV] = str(os.getpid())
        env[PLANT_ENV] = ",".join(self.plant)
        launch = ("import sys; from replichat.testing.chaos import serve_node; "
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
        try:
            with open(self.servers[node].log_path, encoding="utf-8", errors="replace") as f:
                return "".join(collections.deque(f, lines))
        except FileNotFoundError:
            return ""


# -- the workload ------------------------------------------------------------------


class RequestTimeout(Exception):
    """
    No answer within the request timeout.
    """


class LineConnection(LineOnlyReceiver):
    """
    One client connection speaking the JSON line protocol: L{call} sends a
    request and returns a Deferred of its answer; pushed events go to
    C{on_event(connection, event)}.

    @ivar node: the server it is connected to.
    @ivar user: the username this connection is logged in as, as far as the
        client knows, and C{token} its session's token.
    """

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, clock, node: int, on_event) -> None:
        self.clock = clock
        self.node = node
        self.on_event = on_event
        self.pending: dict = {}
        self.next_id = 0
        self.user: str | None = None
        self.token: str | None = None
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def call(self, op: str, args: dict, rid: str | None, timeout: float) -> Deferred:
        """
        Send a request.

        @return: a Deferred firing with the answer object, or failing with
            L{RequestTimeout} or L{ConnectionLost}.
        """
        self.next_id += 1
        request_id = self.next_id
        request = {"id": request_id, "op": op, **args}
        if rid is not None:
            request["rid"] = rid
        answer = Deferred(lambda d: self.pending.pop(request_id, None))
        self.pending[request_id] = answer
        self.sendLine(json.dumps(request).encode("utf-8"))

        def timed_out(failure):
            failure.trap(defer.TimeoutError, CancelledError)
            raise RequestTimeout(op)

        answer.addTimeout(timeout, self.clock)
        answer.addErrback(timed_out)
        return answer

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "event" in message:
            self.on_event(self, message)
            return
        waiting = self.pending.pop(message.get("id"), None)
        if waiting is not None:
            waiting.callback(message)

    def connectionLost(self, reason=None) -> None:
        self.open = False
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            waiting.errback(ConnectionLost())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


@attrs.define(eq=False)
class Shared:
    """
    What the clients know together: accounts acknowledged (name ->
    password), and the leader last heard of.
    """

    accounts: dict = attrs.field(factory=dict)
    leader: int | None = None


class ChaosClient:
    """
    One client: one connection at a time, one logical op at a time, each
    recorded in the history as sent and as answered.

    A write carries a rid and is one history op however often it is sent: a
    retry (after C{not_leader}, C{unavailable}, a timeout or a lost
    connection, on this server or another) reuses the rid and counts as one
    more attempt.  Message texts and passwords are unique in the run
    (C{"c3:17"}, C{"c3-pw-5"}); usernames come from L{USERNAMES}, so they
    collide on purpose.

    @ivar trace: every attempt: C{(op number, node, outcome, time)}, for
        diagnosis (the history does not say which server answered).
    """

    def __init__(self, name: str, rng: random.Random, cluster: ChaosCluster, history,
                 shared: Shared, reactor) -> None:
        self.name = name
        self.rng = rng
        self.cluster = cluster
        self.history = history
        self.shared = shared
        self.reactor = reactor
        self.connection = None
        self.user: str | None = None  # whom this client means to be
        self.password: str | None = None
        self.token: str | None = None
        self.counter = 0
        self.seen: dict[str, set] = collections.defaultdict(set)  # user -> message ids
        self.stopping = False
        self.until = float("inf")
        self.errors: list[str] = []
        self.trace: list[tuple] = []

    # -- plumbing ------------------------------------------------------------------

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _now(self) -> float:
        return time.time()

    async def _sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds)

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def _choose_node(self) -> int:
        leader = self.shared.leader
        if leader in self.cluster.servers and self.rng.random() < 0.8:
            return leader
        return self.rng.choice(sorted(self.cluster.servers))

    def _on_event(self, connection, event: dict) -> None:
        message = event.get("message")
        if event.get("event") == "message" and isinstance(message, dict):
            self.history.pushed(self.name, message, user=connection.user,
                                token=connection.token, at=self._now())
            if connection.user is not None and "id" in message:
                self.seen[connection.user].add(message["id"])

    def _connected(self) -> bool:
        return self.connection is not None and self.connection.open

    async def _connect(self, node: int | None = None) -> bool:
        """
        Connect (to C{node}, or one chosen) and resume the session if there
        is one; C{False} if that failed.
        """
        self._drop()
        node = self._choose_node() if node is None else node
        server = self.cluster[node]
        connection = LineConnection(self.reactor, node, self._on_event)
        endpoint = TCP4ClientEndpoint(self.reactor, server.host, server.client_port,
                                      timeout=CONNECT_TIMEOUT)
        try:
            await connectProtocol(endpoint, connection)
        except Exception:
            return False
        self.connection = connection
        if self.token is not None:
            token = self.token
            status, answer = await self.request("resume", {"token": token}, connect=False)
            if status == "ok":
                connection.user, connection.token = answer["result"]["username"], token
            elif status == "error" and answer["error"]["code"] == "bad_credentials":
                self.token = None
            elif status != "error":
                return False
        return True

    async def _ensure_connected(self) -> bool:
        if self._connected():
            return True
        for _ in range(3):
            if await self._connect():
                return True
            await self._sleep(0.05 + self.rng.random() * 0.1)
        return False

    async def _send(self, record, op: str, args: dict, rid: str | None):
        """
        Send one attempt of C{record} on the current connection.

        @return: C{(outcome, answer)}: C{"ok"}, C{"error"} (a definite
            refusal), C{"unknown"} (no answer, or C{unavailable}: a leader
            that steps down fails its pending writes so, and they may still
            commit), or C{"none"} (not connected: nothing sent).
        """
        connection = self.connection
        if connection is None or not connection.open:
            return "none", None
        try:
            answer = await connection.call(op, args, rid, REQUEST_TIMEOUT)
        except (RequestTimeout, ConnectionLost) as error:
            self.trace.append((record.number, connection.node, type(error).__name__, self._now()))
            self._drop()
            return "unknown", {"why": type(error).__name__}
        if answer.get("ok"):
            self.trace.append((record.number, connection.node, "ok", self._now()))
            self.shared.leader = connection.node if op in WRITE_OPS else self.shared.leader
            return "ok", answer
        code = (answer.get("error") or {}).get("code", "?")
        self.trace.append((record.number, connection.node, code, self._now()))
        if code == "not_leader":
            leader = (answer["error"].get("leader") or {}).get("id")
            self.shared.leader = leader if leader in self.cluster.servers else None
        elif code == "not_logged_in":
            connection.user = connection.token = None
        return ("unknown" if code == "unavailable" else "error"), answer

    def _complete(self, record, outcome: str, answer) -> None:
        now = self._now()
        if outcome == "ok":
            self.history.ok(record, answer.get("result"), at=now)
        elif outcome == "error" or (outcome == "unknown" and answer and "error" in answer):
            self.history.fail(record, answer["error"]["code"], at=now)  # unavailable: unknown
        else:
            self.history.unknown(record, at=now, why=(answer or {}).get("why", "not sent"))

    def _invoke(self, op: str, args: dict, rid: str | None):
        connection = self.connection
        # For these two the history's user is the account named in the
        # arguments (it fills it in), not whoever the connection is.
        user = None if op in ("login", "create_account") else connection.user
        return self.history.invoke(self.name, op, dict(args), rid=rid, user=user,
                                   token=connection.token, at=self._now())

    async def request(self, op: str, args: dict, connect: bool = True):
        """
        One attempt of a request that is not retried (reads, C{hello},
        C{resume}, C{login}).

        @return: C{(outcome, answer)} as L{_send}'s.
        """
        if connect and not await self._ensure_connected():
            return "none", None
        if not self._connected():
            return "none", None
        record = self._invoke(op, args, None)
        outcome, answer = await self._send(record, op, args, None)
        self._complete(record, outcome, answer)
        return outcome, answer

    # -- writes with retries -----------------------------------------------------------

    async def write(self, op: str, args: dict, session: str = "always",
                    deadline: float = WRITE_DEADLINE):
        """
        A write: retried with the same rid until answered definitely or
        C{deadline} seconds pass (never past the end of the workload,
        L{run}'s C{until}).

        @param session: whether each attempt needs the connection logged in
            (C{"always"}; after C{not_logged_in} the client logs in again and
            retries), only the first (C{"first"}: a retried C{delete_account}
            is answered from its rid, with no account left to log in to), or
            none (C{"never"}).
        @return: C{(outcome, answer)} of the last attempt.
        """
        rid = "%s-r%d" % (self.name, self._next())
        deadline = min(self._now() + deadline, self.until)
        outcome, answer, record = "none", None, None
        while True:
            if await self._ensure_connected():
                needed = session == "always" or (session == "first" and record is None)
                if needed and self.connection.user is None and not await self._login_again():
                    break
            if self._connected():
                if record is None:
                    record = self._invoke(op, args, rid)
                else:
                    self.history.attempt(record)
                outcome, answer = await self._send(record, op, args, rid)
                if outcome == "ok":
                    break
                if outcome == "error":
                    code = answer["error"]["code"]
                    if code == "not_leader":
                        if self.shared.leader is not None:
                            await self._connect(self.shared.leader)
                        else:
                            self._drop()
                    elif code != "not_logged_in" or session != "always":
                        break
                    # not_logged_in: log in again, then retry the same rid.
            if self.stopping or self._now() > deadline:
                break
            await self._sleep(0.05 + self.rng.random() * 0.2)
            if outcome == "unknown" and self.rng.random() < 0.5:
                self._drop()  # try elsewhere: this server may be stalled
        if record is not None:
            self._complete(record, outcome, answer)
        return outcome, answer

    async def _login_again(self) -> bool:
        if self.user is None or self.password is None:
            return False
        return await self.login(self.user, self.password)

    async def login(self, username: str, password: str) -> bool:
        """
        Log in on the current connection.  A login is never deduplicated
        (each makes a session), so it carries no rid and after an unknown
        outcome it is simply done again, as a new op.
        """
        for _ in range(4):
            outcome, answer = await self.request(
                "login", {"username": username, "password": password}
            )
            if outcome == "ok" and self._connected():
                token = answer["result"]["token"]
                self.connection.user, self.connection.token = username, token
                self.user, self.password, self.token = username, password, token
                return True
            if outcome == "error":
                code = answer["error"]["code"]
                if code == "not_leader" and self.shared.leader is not None:
                    await self._connect(self.shared.leader)
                    continue
                if code in ("bad_credentials", "no_such_user"):
                    if self.user == username:
                        self.user = self.password = self.token = None
                    return False
            if self.stopping or self._now() > self.until:
                return False
            await self._sleep(0.05 + self.rng.random() * 0.1)
        return False

    # -- the ops -------------------------------------------------------------------------

    async def run(self, until: float) -> None:
        """
        Do ops until the wall clock passes C{until} (or L{stop}).
        """
        self.until = until
        while not self.stopping and self._now() < until:
            try:
                await self.step()
            except Exception:
                self.errors.append("client %s: %s" % (self.name, traceback.format_exc()))
                self._drop()
                await self._sleep(0.1)
            await self._sleep(self.rng.random() * 0.01)
        self._drop()

    def stop(self) -> None:
        self.stopping = True

    async def step(self) -> None:
        if self.user is None:
            await self.become_someone()
            return
        # Mostly cheap writes: account ops hash a password on the leader
        # (scrypt, tens of milliseconds), so they are rarer.
        roll = self.rng.random()
        if roll < 0.42:
            await self.send()
        elif roll < 0.58:
            await self.read()
        elif roll < 0.68:
            await self.history_page()
        elif roll < 0.73:
            await self.list_accounts()
        elif roll < 0.82:
            await self.delete_messages()
        elif roll < 0.86:
            await self.create_account(login=False)
        elif roll < 0.89:
            await self.switch_user()
        elif roll < 0.905:
            await self.delete_account()
        elif roll < 0.94:
            await self.request(self.rng.choice(["hello", "cluster"]), {})
        else:
            # A new connection, resuming the session by token.
            self._drop()
            await self._ensure_connected()

    async def become_someone(self) -> None:
        accounts = self.shared.accounts
        if accounts and self.rng.random() < 0.7:
            username = self.rng.choice(sorted(accounts))
            if await self.login(username, accounts[username]):
                return
        await self.create_account(login=True)

    async def create_account(self, login: bool) -> None:
        username = self.rng.choice(USERNAMES)
        password = "%s-pw-%d" % (self.name, self._next())
        outcome, answer = await self.write(
            "create_account", {"username": username, "password": password}, session="never"
        )
        if outcome == "ok":
            name = answer["result"].get("username", username)
            self.shared.accounts[name] = password
            if login:
                await self.login(name, password)

    async def switch_user(self) -> None:
        await self.write("logout", {})
        if self.connection is not None:
            # The server ends the session as it takes the request.
            self.connection.user = self.connection.token = None
        self.user = self.password = self.token = None
        await self.become_someone()

    async def send(self) -> None:
        text = "%s:%d" % (self.name, self._next())
        outcome, answer = await self.write(
            "send", {"to": self.rng.choice(USERNAMES), "text": text}
        )
        if outcome == "ok":
            self._saw([answer["result"].get("message")])

    async def read(self) -> None:
        outcome, answer = await self.write("read", {"limit": self.rng.randint(1, 5)})
        if outcome == "ok":
            self._saw(answer["result"].get("messages", ()))

    def _saw(self, messages) -> None:
        if self.user is None:
            return
        for message in messages:
            if isinstance(message, dict) and "id" in message:
                self.seen[self.user].add(message["id"])

    async def history_page(self) -> None:
        if not await self._ensure_connected() or self.connection.user is None:
            return
        args = {"limit": self.rng.randint(1, 20)}
        if self.rng.random() < 0.5:
            args["with"] = self.rng.choice(USERNAMES)
        outcome, answer = await self.request("history", args)
        if outcome == "ok":
            self._saw(answer["result"].get("messages", ()))

    async def list_accounts(self) -> None:
        pattern = self.rng.choice(["*", "a*", "*a*", "?o?", "e*"])
        await self.request("list_accounts", {"pattern": pattern, "limit": self.rng.randint(1, 10)})

    async def delete_messages(self) -> None:
        mine = sorted(self.seen.get(self.user, ()))
        if not mine:
            await self.send()
            return
        ids = self.rng.sample(mine, min(len(mine), self.rng.randint(1, 3)))
        others = sorted({i for user, seen in self.seen.items() if user != self.user
                         for i in seen} - set(mine))
        if others and self.rng.random() < 0.1:
            ids.append(self.rng.choice(others))  # someone else's: must stay
        outcome, _ = await self.write("delete_messages", {"ids": ids})
        if outcome == "ok" and self.user is not None:
            self.seen[self.user].difference_update(ids)

    async def delete_account(self) -> None:
        user, password = self.user, self.password
        if user is None or password is None:
            return
        outcome, _ = await self.write("delete_account", {"password": password}, session="first")
        if outcome == "ok":
            if self.shared.accounts.get(user) == password:
                del self.shared.accounts[user]
            if self.connection is not None:
                self.connection.user = self.connection.token = None
            self.user = self.password = self.token = None


# -- the fault schedule ------------------------------------------------------------------

#: The nemesis's faults; each is drawn once per shuffled round, so that even
#: a short run injects every kind.
KINDS = ("kill", "pause", "isolate", "bridge", "one-way", "delay")


class Nemesis:
    """
    Injects one fault at a time at seeded random intervals, and undoes each
    after a seeded random while: a killed server is restarted, a paused one
    continued, a network fault healed (a new network fault heals the last
    one first).  At most n-1 servers are down or paused at once, the
    service's promise.
    """

    def __init__(self, rng: random.Random, driver: "ChaosDriver") -> None:
        self.rng = rng
        self.driver = driver
        self.bag: list[str] = []
        self.timers: list = []
        self.network_episode = 0
        self.network_active = False
        self.stopped = False

    def start(self, until: float) -> None:
        self.until = until
        self._later(self.rng.uniform(0.5, 1.5), self._tick)

    def stop(self) -> None:
        """
        No more faults; cancel the pending undos (the final phase heals,
        continues and restarts everything itself).
        """
        self.stopped = True
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers = []

    def _later(self, seconds: float, f, *args) -> None:
        self.timers = [t for t in self.timers if t.active()]
        self.timers.append(self.driver.reactor.callLater(seconds, self._guarded, f, *args))

    def _guarded(self, f, *args) -> None:
        # A timer callback that raised would only be logged; say it loudly.
        if self.stopped:
            return
        try:
            f(*args)
        except Exception:
            self.driver.harness_errors.append(traceback.format_exc())

    def _tick(self) -> None:
        if time.time() >= self.until:
            return
        for _ in range(len(KINDS)):
            if not self.bag:
                self.bag = list(KINDS)
                self.rng.shuffle(self.bag)
            kind = self.bag.pop()
            if self._inject(kind):
                break
        self._later(self.rng.uniform(0.4, 1.6), self._tick)

    def _target(self, candidates: list[int]) -> int:
        leader = self.driver.shared.leader
        if leader in candidates and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(candidates)

    def _inject(self, kind: str) -> bool:
        """
        Inject a fault of C{kind}; C{False} if none fits now.
        """
        driver = self.driver
        nodes = sorted(driver.cluster.servers)
        if kind in ("kill", "pause"):
            down = driver.unavailable()
            candidates = [n for n in nodes if n not in down]
            if len(down) + 1 > len(nodes) - 1 or not candidates:
                return False
            node = self._target(candidates)
            if kind == "kill":
                driver.kill(node)
                self._later(self.rng.uniform(0.3, 4.0), driver.restart, node)
            else:
                driver.pause(node)
                # Sometimes shorter than the failure timeout, sometimes far longer.
                timeout = driver.settings["timing"]["failure_timeout"]
                pause = (self.rng.uniform(0.05, 0.8 * timeout) if self.rng.random() < 0.4
                         else self.rng.uniform(1.5 * timeout, 6 * timeout))
                self._later(pause, driver.resume, node)
            return True
        if self.network_active:
            driver.heal()
        mode = self.rng.choice(("drop", "stall"))
        if kind == "isolate":
            node = self._target(nodes)
            driver.network_fault(kind, mode=mode, alone=node,
                                 apply=lambda p: p.partition({node}, set(nodes) - {node}, mode))
        elif kind == "bridge":
            a, b = self.rng.sample(nodes, 2)
            driver.network_fault(kind, mode=mode, pair=[a, b],
                                 apply=lambda p: p.cut(a, b, mode))
        elif kind == "one-way":
            a, b = self.rng.sample(nodes, 2)
            driver.network_fault(kind, mode=mode, sender=a, receiver=b,
                                 apply=lambda p: p.block(a, b, mode))
        else:
            a, b = self.rng.sample(nodes, 2)
            seconds = round(self.rng.uniform(0.02, 0.3), 3)
            driver.network_fault(kind, pair=[a, b], seconds=seconds,
                                 apply=lambda p: p.set_delay(a, b, seconds))
        self.network_active = True
        self.network_episode += 1
        self._later(self.rng.uniform(0.5, 4.0), self._heal, self.network_episode)
        return True

    def _heal(self, episode: int) -> None:
        if episode == self.network_episode and self.network_active:
            self.driver.heal()
            self.network_active = False


# -- the replicas, read offline ------------------------------------------------------------


def load_replica(data_dir: str, node: int, commit_index: int):
    """
    Read a stopped server's data directory into a
    L{replichat.testing.history.Replica} at C{commit_index} (the commit
    index is not on disk: the caller knows it from the converged cluster),
    with the classes the server uses: its committed log entries, the
    snapshot its log starts from, and its state rebuilt as the server does
    at start-up, from the newest intact snapshot at or below C{commit_index}
    plus the log's entries after it, each applied with its epoch.

    Recovery may repair the directory (cut a torn tail): give it a copy.

    @return: the replica, and a note if it could not be rebuilt at exactly
        C{commit_index} (its newest snapshots are past it, the log no longer
        reaches back: the replica is then at the oldest such snapshot).
    """
    from replichat.entries import CorruptSnapshot
    from replichat.log import SegmentedLog
    from replichat.node import decode_command
    from replichat.snapshot import FileSnapshotStore
    from replichat.state import ChatState
    from replichat.testing.history import Replica

    disk_log = SegmentedLog(os.path.join(data_dir, "log"))
    note = None
    try:
        store = FileSnapshotStore(os.path.join(data_dir, "snapshots"))
        usable = [s for s in store.load_all()
                  if not isinstance(s, CorruptSnapshot) and s.index >= disk_log.base_index]
        state = None
        for snapshot in usable:  # newest first
            if snapshot.index <= commit_index:
                state = ChatState.from_snapshot(snapshot.data)
                break
        if state is None and usable:
            # A snapshot taken while the servers stopped, past the index
            # they converged at.
            state = ChatState.from_snapshot(usable[-1].data)
            note = "node %d: its snapshots are past index %d; checked at %d" % (
                node, commit_index, state.applied_index)
            commit_index = state.applied_index
        elif state is None:
            if disk_log.base_index > 0:
                raise ValueError("node %d: no intact snapshot, and the log starts at %d"
                                 % (node, disk_log.first_index))
            state = ChatState()
        commit_index = min(commit_index, max(disk_log.last_index, state.applied_index))
        for entry in disk_log.read(state.applied_index + 1, commit_index + 1):
            state.apply(entry.index, decode_command(entry.data), entry.epoch)
        replica = Replica.of_storage(node, disk_log, store, commit_index, state)
    finally:
        disk_log.close()
    return replica, note


# -- the driver -----------------------------------------------------------------------------


class ChaosDriver:
    """
    One run: the servers, the proxy, the clients, the nemesis, the final
    phase and the check.

    @ivar faults: count of each fault injected (and undone), by kind.
    @ivar fault_log: every fault, with its time since the start.
    @ivar notes: remarks for the summary (what the final phase saw).
    @ivar harness_errors: tracebacks of the driver's own failures.
    """

    def __init__(self, options, reactor) -> None:
        from replichat.testing.history import History
        from replichat.testing.proxy import FaultProxy

        self.options = options
        self.reactor = reactor
        self.directory = options.directory
        self.settings = {
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
        self.cluster = ChaosCluster(self.directory, options.servers, self.proxy, self.settings,
                                    plant=tuple(options.plant))
        self.history = History()
        self.shared = Shared()
        self.faults: collections.Counter = collections.Counter()
        self.fault_log: list[dict] = []
        self.notes: list[str] = []
        self.harness_errors: list[str] = []
        self.anomalies: list = []
        self.started = time.time()
        self.final_phase = False
        self.watcher = None
        self._probing: set[int] = set()
        self.clients: list[ChaosClient] = []
        self.extra_clients: list[ChaosClient] = []
        self.report = None
        self.cleaned = False
        self.checked = False
        self.partial = False
        self.last_rows: dict = {}

    # -- faults, as the nemesis and the final phase call them ---------------------

    def fault(self, kind: str, **detail) -> None:
        self.faults[kind] += 1
        now = time.time()
        self.fault_log.append({"at": round(now - self.started, 3), "time": round(now, 3),
                               "kind": kind, **detail})

    def anomaly(self, kind: str, text: str) -> None:
        """
        Report an anomaly the run itself saw (the checker reports the rest).
        """
        from replichat.testing.history import Anomaly

        self.anomalies.append(Anomaly(kind, text))

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
        self.fault("kill", node=node)

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
        self.fault("restart", node=node)

    def pause(self, node: int) -> None:
        server = self.cluster[node]
        server.signal(signal.SIGSTOP)
        server.paused = True
        self.fault("pause", node=node)

    def resume(self, node: int) -> None:
        server = self.cluster[node]
        if server.paused:
            server.signal(signal.SIGCONT)
            server.paused = False
            self.fault("resume", node=node)

    def network_fault(self, kind: str, apply, **detail) -> None:
        apply(self.proxy)
        self.fault(kind, **detail)

    def heal(self) -> None:
        self.proxy.heal()
        self.fault("heal")

    # -- watching the processes ---------------------------------------------------

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
                        self.fault("exit", node=node, code=code, log=tail[-8:])
                        if not self.final_phase:
                            self.reactor.callLater(1.0, self.restart, node)
                    continue
                if not server.ready and node not in self._probing and not server.paused:
                    self._probing.add(node)
                    Deferred.fromCoroutine(self._probe(node))
        except Exception:
            self.harness_errors.append(traceback.format_exc())

    async def _probe(self, node: int) -> None:
        from twisted.internet.protocol import Protocol

        server = self.cluster[node]
        process = server.process
        try:
            endpoint = TCP4ClientEndpoint(self.reactor, server.host, server.client_port,
                                          timeout=CONNECT_TIMEOUT)
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
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(s.ready for s in self.cluster.servers.values()):
                return True
            await deferLater(self.reactor, 0.05)
        return False

    async def ask(self, node: int, op: str, timeout: float = 2.0) -> dict | None:
        """
        One request on a fresh connection; the answer, or L{None}.
        """
        server = self.cluster[node]
        connection = LineConnection(self.reactor, node, lambda c, e: None)
        endpoint = TCP4ClientEndpoint(self.reactor, server.host, server.client_port,
                                      timeout=CONNECT_TIMEOUT)
        try:
            await connectProtocol(endpoint, connection)
            return await connection.call(op, {}, None, timeout)
        except Exception:
            return None
        finally:
            connection.close()

    # -- the run ------------------------------------------------------------------

    async def run(self) -> int:
        from twisted.internet.task import LoopingCall

        options = self.options
        self.watcher = LoopingCall(self.watch)
        self.watcher.clock = self.reactor
        self.watcher.start(0.05)
        for node in self.cluster.servers:
            self.cluster.spawn(node)
        if not await self.wait_ready(START_TIMEOUT):
            self.harness_errors.append("the servers did not start within %ss" % (START_TIMEOUT,))
            return self.finish(converged=False, replicas=[])
        self.started = time.time()
        until = self.started + options.duration
        rng = random.Random(options.seed)
        self.clients = [
            ChaosClient("c%d" % (i,), random.Random("%s-c%d" % (options.seed, i)),
                        self.cluster, self.history, self.shared, self.reactor)
            for i in range(1, options.clients + 1)
        ]
        running = [Deferred.fromCoroutine(c.run(until)) for c in self.clients]
        nemesis = Nemesis(rng, self)
        nemesis.start(until)
        for waiting in running:
            await waiting  # each ends within a write's deadline of `until`
        for client in self.clients:
            self.harness_errors.extend(client.errors)
        nemesis.stop()
        return await self.final()

    async def final(self) -> int:
        """
        Heal, continue and restart everything; require a write to succeed
        and the servers to converge; stop them with SIGTERM; check.
        """
        self.final_phase = True
        self.workload_ended = time.time()
        self.proxy.heal()
        for node, server in self.cluster.servers.items():
            if server.paused:
                self.resume(node)
            if not server.running:
                self.cluster.spawn(node)
                self.fault("restart", node=node)
        if not await self.wait_ready(START_TIMEOUT):
            self.anomaly("not-running", "servers %s did not start again within %ss"
                         % (sorted(self.unavailable()), START_TIMEOUT))
        # Liveness: once healed, the cluster must take a write.
        healed = time.time()
        final = ChaosClient("final", random.Random(self.options.seed), self.cluster,
                            self.history, self.shared, self.reactor)
        self.extra_clients.append(final)
        password = "final-pw-%d" % (self.options.seed,)
        status, _ = await final.write(
            "create_account", {"username": "final", "password": password},
            session="never", deadline=self.options.final_timeout,
        )
        final._drop()
        if status == "ok":
            self.notes.append("a write succeeded %.2f s after the heal" % (time.time() - healed,))
        else:
            self.anomaly("no-progress", "no write acknowledged within %ss of the heal"
                         % (self.options.final_timeout,))
        index = await self.converge(self.options.final_timeout)
        if index is None:
            self.anomaly("not-converged", "servers did not converge within %ss: %s"
                         % (self.options.final_timeout, self.last_rows))
        else:
            self.notes.append("converged at index %d, %.2f s after the heal"
                              % (index, time.time() - healed))
        await self.stop_servers()
        for event in self.fault_log:
            if event["kind"] == "exit":
                # Not the nemesis's doing: a crash, or a server stopping
                # itself (its log tail says which).
                self.anomaly("server-exit",
                             "node %d exited on its own with status %s at +%.3f s: %s"
                             % (event["node"], event["code"], event["at"],
                                " | ".join(event["log"][-3:])))
        replicas = self.load_replicas(index) if index is not None else []
        return self.finish(converged=index is not None, replicas=replicas)

    async def converge(self, timeout: float) -> int | None:
        """
        Wait until every server's own row of its C{cluster} answer shows the
        same last index and commit index, equal to each other.
        """
        deadline = time.time() + timeout
        self.last_rows = {}
        while time.time() < deadline:
            rows = {}
            for node in self.cluster.servers:
                answer = await self.ask(node, "cluster")
                row = None
                if answer is not None and answer.get("ok"):
                    row = next((r for r in answer["result"]["nodes"] if r["id"] == node), None)
                rows[node] = None if row is None else (row["last_index"], row["commit_index"])
            self.last_rows = rows
            pairs = set(rows.values())
            if len(pairs) == 1:
                (pair,) = pairs
                if pair is not None and pair[0] == pair[1]:
                    return pair[0]
            await deferLater(self.reactor, 0.1)
        return None

    async def stop_servers(self) -> None:
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
                self.anomaly("stop-timeout", "node %d ignored SIGTERM for %ss"
                             % (node, STOP_TIMEOUT))
                server.signal(signal.SIGKILL)
                server.process.wait(timeout=10)
            elif server.process and server.process.returncode not in (0, -signal.SIGTERM):
                # (twistd ends by re-raising the signal that stopped it.)
                self.notes.append("node %d exited with status %s after SIGTERM"
                                  % (node, server.process.returncode))

    def load_replicas(self, index: int) -> list:
        """
        Each server's data directory, copied and read offline at C{index}.
        """
        replicas = []
        offline = os.path.join(self.directory, "offline")
        for node, server in self.cluster.servers.items():
            copy = os.path.join(offline, "node-%d" % (node,))
            try:
                shutil.copytree(server.data_dir, copy)
                replica, note = load_replica(copy, node, index)
            except Exception as error:
                self.anomaly("unreadable", "node %d: %s: %s"
                             % (node, type(error).__name__, error))
                continue
            if note:
                self.notes.append(note)
                self.partial = True
            replicas.append(replica)
        return replicas

    def finish(self, converged: bool, replicas: list) -> int:
        """
        Check the history, write the files, print the summary.

        @return: the exit status: 0 clean, 1 anomalies, 2 the harness failed.
        """
        from replichat.testing.history import check

        self.checked = False
        if replicas and not self.harness_errors:
            partitioned = any(self.faults[k] for k in ("isolate", "bridge", "one-way"))
            # A server paused past the failure timeout can lead stale once
            # the others die: reads are only linearizable without pauses.
            report = check(self.history, replicas, converged=converged and not self.partial,
                           partitioned=partitioned,
                           linearizable=not (partitioned or self.faults["pause"]))
            self.anomalies.extend(report.anomalies)
            self.notes.extend(report.notes)
            self.notes.append("checker: " + report.summary())
            self.report = report
            self.checked = True
        for link in self.proxy.links.values():
            if link.broken:
                self.harness_errors.append("proxy link %d->%d lost its port %d"
                                           % (link.source, link.target, link.port))
        status = 2 if self.harness_errors or not self.checked else (1 if self.anomalies else 0)
        summary = self.summary(status)
        self.history.dump(os.path.join(self.directory, "history.jsonl"))
        with open(os.path.join(self.directory, "attempts.jsonl"), "w") as f:
            for client in self.clients + self.extra_clients:
                for number, node, outcome, at in client.trace:
                    f.write(json.dumps({"op": number, "client": client.name, "node": node,
                                        "outcome": outcome, "at": at}) + "\n")
        if self.anomalies and getattr(self, "report", None) is not None:
            with open(os.path.join(self.directory, "anomalies.txt"), "w") as f:
                f.write(self.report.describe(self.history, limit=200) + "\n")
        with open(os.path.join(self.directory, "faults.jsonl"), "w") as f:
            for event in self.fault_log:
                f.write(json.dumps(event) + "\n")
        with open(os.path.join(self.directory, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        if self.options.summary:
            with open(self.options.summary, "w") as f:
                json.dump(summary, f, indent=1)
        print(render_summary(summary), flush=True)
        return status

    def summary(self, status: int) -> dict:
        ops: dict = collections.defaultdict(collections.Counter)
        attempts = 0
        for op in self.history.ops:
            ops[op.op][op.status or "pending"] += 1
            attempts += op.attempts
        return {
            "seed": self.options.seed,
            "planted": list(self.options.plant),
            "duration": self.options.duration,
            "servers": self.options.servers,
            "clients": self.options.clients,
            "directory": self.directory,
            "started_at": self.started,
            "ops": {name: dict(counts) for name, counts in sorted(ops.items())},
            "operations": len(self.history.ops),
            "attempts": attempts,
            "pushes": len(self.history.pushes),
            "faults": dict(sorted(self.faults.items())),
            "notes": self.notes,
            "anomalies": [{"kind": a.kind, "detail": a.text, "ops": list(a.ops),
                           "indexes": list(a.indexes), "nodes": list(a.nodes)}
                          for a in self.anomalies],
            "harness_errors": self.harness_errors,
            "checked": self.checked,
            "status": status,
        }

    def cleanup(self) -> None:
        """
        Stop watching, close the proxy and SIGKILL whatever still runs (by
        process group): called whatever happened, maybe twice.
        """
        if self.cleaned:
            return
        self.cleaned = True
        if self.watcher is not None and self.watcher.running:
            self.watcher.stop()
        for client in self.clients:
            client.stop()
            client._drop()
        try:
            self.proxy.close()
        finally:
            self.cluster.kill_all()


def _status_order(status: str) -> tuple:
    return (["ok", "fail", "unknown", "pending"].index(status)
            if status in ("ok", "fail", "unknown", "pending") else 9, status)


def render_summary(summary: dict) -> str:
    """
    The summary, for people.
    """
    lines = ["chaos: seed %s, %s s, %d servers, %d clients; %d ops (%d attempts), %d pushes"
             % (summary["seed"], summary["duration"], summary["servers"], summary["clients"],
                summary["operations"], summary["attempts"], summary["pushes"])]
    if summary["planted"]:
        lines.append("planted bugs: " + ", ".join(summary["planted"]))
    lines.append("ops by status:")
    for name, counts in summary["ops"].items():
        lines.append("  %-16s %s" % (name, "  ".join(
            "%s %d" % item for item in sorted(counts.items(), key=lambda i: _status_order(i[0])))))
    lines.append("faults: " + (", ".join("%s %d" % item for item in summary["faults"].items())
                               or "none"))
    for note in summary["notes"]:
        lines.append("note: " + note)
    for error in summary["harness_errors"]:
        lines.append("HARNESS ERROR: " + error.rstrip())
    lines.append("anomalies: %d" % (len(summary["anomalies"]),))
    for anomaly in summary["anomalies"][:30]:
        lines.append("  %s: %s" % (anomaly["kind"], anomaly["detail"]))
    if len(summary["anomalies"]) > 30:
        lines.append("  ... (%d more in summary.json)" % (len(summary["anomalies"]) - 30,))
    verdict = {0: "clean", 1: "ANOMALIES", 2: "HARNESS FAILED"}[summary["status"]]
    lines.append("result: %s" % (verdict,))
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
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
    from replichat import failpoints

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
