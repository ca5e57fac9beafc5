# -*- test-case-name: tests.test_simulate -*-
"""
A deterministic simulator of a whole replichat deployment, in the manner of
the FoundationDB and TigerBeetle simulators: the real servers (L{Node} and
L{ChatHandler}) on L{replichat.simulation.SimCluster}, several clients doing
every chat operation, and a nemesis injecting faults at random times, all
driven by one C{random.Random(seed)} per concern on one simulated clock.
The same seed gives the same run, byte for byte: L{run_seed} returns its
trace, whose digest a test compares.

A run:

  1. B{Faulty phase}: servers start; clients work while the nemesis crashes
     and restarts servers (also at the point of an fsync, and all of them
     at once), partitions them (any split; both ways or one way; breaking
     the connections or stalling them), resets connections, delays
     messages, stops servers (SIGSTOP) and makes their fsyncs slow.
  2. B{Heal}: every fault is undone; crashed servers restart.
  3. B{Quiet period}: clients finish what they started, the cluster is
     given time to converge.  In C{liveness} mode a fresh write must
     commit within a bound after the heal, and the servers must converge.
  4. B{Check}: the history of what clients saw and the servers' committed
     logs and states go to L{replichat.testing.history.check}.  In a
     scenario of crashes only, every server's committed entries as they
     were when it crashed must also still be the committed entries at their
     indexes at the end (nothing committed is ever cut).

Faults, as L{replichat.simulation} models them (TCP: per-connection FIFO,
no duplication; a crash is a power loss):

  - C{crash}, C{crash-leader}: SIGKILL plus power loss; restart later.
  - C{crash-at-sync}: a server crashes in its next fsync, before it
    completes (the batch is lost) or just after (it is durable, but nothing
    the server did in that turn was sent); mostly the leader.
  - C{crash-soon-after-sync}: the leader crashes a few milliseconds after
    an fsync, while what it sent is partly delivered.
  - C{crash-after-ack}: the leader crashes the moment a client receives its
    answer to a write (what it sent that is still in flight dies with it).
  - C{full-outage}: every server crashes, one by one, then all restart in a
    random order.
  - C{partition}: a random split, both ways; C{one-way}: one direction of
    one pair; C{bridge}: two sides that only one server reaches both of.
    Each either resets the connections or leaves them stalled.
  - C{reset}: a peer connection is reset; C{client-reset}: a client's.
  - C{pause}: SIGSTOP for up to a few failure timeouts, then SIGCONT.
  - C{slow-fsync}: for a while, each fsync of a server blocks it for up
    to most of a second (a process blocked in fsync runs nothing).
  - C{slow-net}: for a while, messages take up to tens of milliseconds,
    with jitter (reordering across connections, never within one).

Clients use the real handler of the server they are connected to, through
a fake connection that behaves like TCP too.  Every write but C{login}
carries a rid (a login is never deduplicated: each attempt needs a session
of its own); a retry (after C{not_leader}, C{unavailable}, a timeout or a
lost connection) reuses it, on the leader named or another server, after
resuming the session there (or logging in again).

Determinism: no wall clock, no randomness but the seed's (password records
come from L{SimHasher}, session tokens from the seed), nothing iterated in
an order that depends on object ids.  Not modelled: steps of the wall clock
(the servers' reactors schedule on C{time.time}), disk errors (EIO, ENOSPC:
tested on real processes), and servers joining or leaving.

C{bin/simulate} runs many seeds and prints a summary (L{main}).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogBeginner, globalLogPublisher

from replichat import errors, failpoints
from replichat.config import parse_config
from replichat.errors import ChatError
from replichat.handler import ChatHandler, Session
from replichat.node import Timing
from replichat.requests import parse_request
from replichat.simulation import SimCluster
from replichat.testing import history as checker

MODES = ("safety", "liveness")

#: Fault mixes: each scenario's fault kinds and how often the nemesis
#: picks each (relative weights).  Every kind is described in the module
#: docstring.
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
#: checks on top of the checker (L{Simulation.check_never_cut}).
SPLITTING = frozenset({"partition", "one-way", "bridge", "pause", "slow-fsync"})

#: Usernames clients pick from: few, so that names collide.
NAMES = ("ann", "bob", "cat", "dan", "eve", "fay")

#: Seconds a client waits for an answer before it gives up on a connection.
REQUEST_TIMEOUT = 2.0

#: Attempts of one operation (the first and its retries) before giving up.
MAX_ATTEMPTS = 6

#: How many trace lines a report shows before the replay command.
TRACE_TAIL = 60


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
    """

    mode: str = "safety"
    scenario: str | None = None
    servers: int | None = None
    clients: int = 5
    ops: int = 120
    faulty: float = 8.0
    quiet: float = 25.0
    progress: float = 10.0

    def for_seed(self, seed: int) -> Settings:
        """
        These settings with every choice left to the seed made.
        """
        pick = random.Random("replichat-sim-settings:%d" % (seed,))
        mode = MODES[seed % 2] if self.mode == "both" else self.mode
        scenario = self.scenario or pick.choice(sorted(SCENARIOS))
        servers = self.servers or pick.choice((3, 3, 3, 3, 3, 3, 4, 5))
        return Settings(mode, scenario, servers, self.clients, self.ops, self.faulty,
                        self.quiet, self.progress)


@frozen
class SimAnomaly:
    """
    Something the simulator itself found wrong (the checker's are
    L{checker.Anomaly}).
    """

    kind: str
    text: str


@frozen
class RunResult:
    """
    What one seed's run did and found.

    @ivar anomalies: the checker's and the simulator's, each with C{kind}
        and C{text}.
    @ivar trace: one line per event, C{"%9.3f event"}.
    @ivar faults: faults injected, by kind.
    @ivar ops: operations by C{"op status"}.
    @ivar simulated: simulated seconds the run took.
    @ivar wall: wall-clock seconds it took (not part of the trace).
    @ivar stalls: fsyncs made slow (while a C{slow-fsync} fault lasted).
    @ivar planted: the planted bugs (L{failpoints}) that were on.
    """

    seed: int
    settings: Settings
    anomalies: tuple
    trace: tuple
    faults: dict
    ops: dict
    simulated: float
    wall: float
    converged: bool
    stalls: int = 0
    planted: tuple = ()
    report: Any = field(default=None, eq=False, repr=False)
    history: Any = field(default=None, eq=False, repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode("utf-8")).hexdigest()

    def replay_command(self, defaults: Settings = Settings()) -> str:
        """
        The command that runs this seed again and prints its trace.
        """
        words = ["bin/simulate", "--seed", str(self.seed), "--trace"]
        s = self.settings
        words += ["--mode", s.mode, "--scenario", s.scenario, "--servers", str(s.servers)]
        for name, flag in (("clients", "--clients"), ("ops", "--ops"), ("faulty", "--faulty")):
            if getattr(s, name) != getattr(defaults, name):
                words += [flag, str(getattr(s, name))]
        for bug in self.planted:
            words += ["--plant", bug]
        return " ".join(words)

    def describe(self, tail: int = TRACE_TAIL) -> str:
        """
        The anomalies, the end of the trace and the replay command.
        """
        s = self.settings
        lines = ["seed %d (%s, %s, %d servers): %d anomalies" % (
            self.seed, s.mode, s.scenario, s.servers, len(self.anomalies))]
        lines += ["  %s: %s" % (a.kind, a.text) for a in self.anomalies]
        if self.report is not None and self.history is not None and self.report.anomalies:
            for anomaly in self.report.anomalies[:5]:
                if anomaly.ops:
                    lines.append("  ops of %s:" % (anomaly.kind,))
                    lines += ["    " + line
                              for line in self.history.describe(anomaly.ops).splitlines()]
        lines.append("last %d trace lines:" % (min(tail, len(self.trace)),))
        lines += list(self.trace[-tail:])
        lines.append("replay: " + self.replay_command())
        return "\n".join(lines)


# -- deterministic stand-ins -------------------------------------------------------


class SimHasher:
    """
    L{replichat.passwords.PasswordHasher}'s interface, synchronous and
    deterministic: a record is an unsalted digest, so that every run of a
    seed logs the same bytes (scrypt's salt is random, and slow).
    """

    @staticmethod
    def _digest(password: str) -> str:
        return hashlib.sha256(password.encode("utf-8")).hexdigest()

    def hash(self, password: str) -> Deferred:
        return succeed({"alg": "sim", "hash": self._digest(password)})

    def check(self, password: str, record: dict | None) -> Deferred:
        return succeed(record is not None and record.get("hash") == self._digest(password))


class _Trace:
    def __init__(self, clock) -> None:
        self.clock = clock
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append("%9.3f %s" % (self.clock.seconds(), text))


def _wire(obj: object) -> Any:
    """
    What a JSON line carries of C{obj} (tuples become lists, keys strings).
    """
    return json.loads(json.dumps(obj))


# -- client connections -------------------------------------------------------------


_FIN = object()


class ClientConnection:
    """
    One client's TCP connection to one server, as the server's handler sees
    it (C{session}, C{push_message}) and as the client does.

    Each direction is a FIFO with a small delay.  A close by the client is a
    FIN: requests already sent still arrive, then the server forgets the
    connection.  A reset or the server's crash loses what is in flight both
    ways.  The server reads and writes through its L{Process}, so a stopped
    server answers nothing until it runs again.
    """

    def __init__(self, sim: Simulation, client: SimClient, node_id: int, serial: int) -> None:
        self.sim = sim
        self.client = client
        self.node_id = node_id
        self.serial = serial
        self.handler = sim.handlers[node_id]
        self.process = sim.cluster.processes[node_id]
        self.session = Session()
        self.client_open = True
        self.server_open = True
        self._up_due = 0.0
        self._down_due = 0.0
        self.ops: dict = {}  # request id -> op, for the nemesis

    def __hash__(self) -> int:
        # The handler keeps connections in sets; hashing by id() would make
        # the order it pushes in differ from run to run.
        return self.serial

    def _due(self, last: float) -> float:
        return max(self.sim.clock.seconds() + self.sim.client_delay(), last)

    # -- client to server ------------------------------------------------------

    def send(self, obj: object) -> None:
        if not self.client_open:
            return
        if isinstance(obj, dict):
            self.ops[obj.get("id")] = obj.get("op")
        self._up_due = due = self._due(self._up_due)
        self.sim.clock.callLater(due - self.sim.clock.seconds(), self._arrive, obj)

    def close(self) -> None:
        """
        The client closes: the server reads what was sent, then the end.
        """
        if self.client_open:
            self.send(_FIN)
            self.client_open = False

    def _arrive(self, obj: object) -> None:
        if self.server_open:
            self.process.receive(partial(self._serve, obj))

    def _serve(self, obj: object) -> None:
        if not self.server_open:
            return
        if obj is _FIN:
            self.server_open = False
            self.handler.connection_lost(self)
            return
        request_id = obj.get("id")
        try:
            request = parse_request(obj, self.handler.limits)
            result = self.handler.handle(self, request)
        except ChatError as error:
            return self._answer_error(request_id, error)
        except Exception as error:
            self.sim.flag("exception", "handler raised %r on %s" % (error, obj))
            return self._answer_error(request_id, ChatError(errors.INTERNAL, "internal error"))
        if isinstance(result, Deferred):
            result.addCallbacks(self._answer_result, self._answer_failure,
                                callbackArgs=(request_id,), errbackArgs=(request_id, obj))
        else:
            self._answer_result(result, request_id)

    # -- server to client ----------------------------------------------------------

    def _answer_result(self, result: dict, request_id: object) -> None:
        self._emit({"id": request_id, "ok": True, "result": result})

    def _answer_failure(self, failure, request_id: object, obj: object) -> None:
        if failure.check(ChatError):
            return self._answer_error(request_id, failure.value)
        self.sim.flag("exception", "request %s failed: %s" % (obj, failure.getErrorMessage()))
        self._answer_error(request_id, ChatError(errors.INTERNAL, "internal error"))

    def _answer_error(self, request_id: object, error: ChatError) -> None:
        self._emit({"id": request_id, "ok": False, "error": error.to_wire()})

    def push_message(self, message: dict) -> None:
        self._emit({"event": "message", "message": message})

    def _emit(self, obj: dict) -> None:
        self.process.emit(partial(self._transmit, obj))

    def _transmit(self, obj: dict) -> None:
        if not self.server_open:
            return
        self._down_due = due = self._due(self._down_due)
        self.sim.clock.callLater(due - self.sim.clock.seconds(), self._deliver, _wire(obj))

    def _deliver(self, obj: dict) -> None:
        if self.client_open:
            self.client.received(self, obj)
            if "id" in obj and self.sim.nemesis.armed:
                self.sim.nemesis.acked(self, obj)

    # -- failures ----------------------------------------------------------------------

    def reset(self) -> None:
        """
        A reset: in-flight data is lost; both ends learn it.
        """
        if not (self.client_open or self.server_open):
            return
        client_knew, self.client_open = self.client_open, False
        if self.server_open:
            self.server_open = False
            self.process.receive(partial(self.handler.connection_lost, self))
        if client_knew:
            self.sim.clock.callLater(self.sim.client_delay(), self.client.lost, self, "reset")

    def server_died(self) -> None:
        self.server_open = False
        if self.client_open:
            self.client_open = False
            # The client's kernel learns from the peer's RST or silence;
            # on one host, at once.
            self.sim.clock.callLater(
                self.sim.client_delay(), self.client.lost, self, "server died"
            )


# -- clients --------------------------------------------------------------------------


class SimClient:
    """
    One simulated user program: it logs in, does random chat operations,
    follows C{not_leader}, retries on another server with the same rid,
    restores its session where it lands, and records all of it.
    """

    def __init__(self, sim: Simulation, name: str, quota: int) -> None:
        self.sim = sim
        self.name = name
        self.rng = random.Random("replichat-sim-client:%d:%s" % (sim.seed, name))
        self.quota = quota
        self.started = 0
        self.done = False
        self.conn: ClientConnection | None = None
        self.user: str | None = None  # the account it acts as
        self.password: str | None = None
        self.token: str | None = None
        self.logged_in = False  # on the current connection
        self.accounts: dict[str, str] = {}  # name -> password, its own (maybe)
        self.seen: list[int] = []  # message ids it was shown, to delete
        self._requests: dict[int, Deferred] = {}
        self._request_id = 0
        self._rid = 0
        self._texts = 0
        self._passwords = 0

    # -- plumbing ----------------------------------------------------------------

    def sleep(self, seconds: float) -> Deferred:
        d: Deferred = Deferred()
        self.sim.clock.callLater(seconds, d.callback, None)
        return d

    def received(self, conn: ClientConnection, obj: dict) -> None:
        if conn is not self.conn:
            return
        if "event" in obj:
            message = obj.get("message")
            self.sim.history.pushed(self.name, message, user=self.user, token=self.token,
                                    at=self.sim.clock.seconds())
            if isinstance(message, dict) and "id" in message:
                self._remember(message["id"])
            return
        d = self._requests.pop(obj.get("id"), None)
        if d is not None:
            d.callback(obj)

    def lost(self, conn: ClientConnection, why: str) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self.logged_in = False
        requests, self._requests = self._requests, {}
        for request_id in sorted(requests):
            requests[request_id].callback({"lost": why})

    def _remember(self, message_id: object) -> None:
        if isinstance(message_id, int) and message_id not in self.seen:
            self.seen.append(message_id)
            del self.seen[:-20]

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.lost(self.conn, "closed")

    async def connect(self, node_id: int) -> bool:
        """
        Open a connection to C{node_id}; false if its port refuses.
        """
        self.disconnect()
        await self.sleep(self.sim.client_delay())
        if node_id not in self.sim.handlers:
            return False
        self.conn = self.sim.open_connection(self, node_id)
        self.logged_in = False
        return True

    def other_server(self) -> int:
        here = None if self.conn is None else self.conn.node_id
        choices = [n for n in self.sim.server_ids if n != here]
        return self.rng.choice(choices)

    async def exchange(self, op: str, args: dict, rid: str | None) -> dict:
        """
        One request on the current connection: the answer, or
        C{{"lost": why}}.
        """
        conn = self.conn
        if conn is None:
            return {"lost": "not connected"}
        self._request_id += 1
        request_id = self._request_id
        obj = {"id": request_id, "op": op, **args}
        if rid is not None:
            obj["rid"] = rid
        d: Deferred = Deferred()
        self._requests[request_id] = d

        def timeout() -> None:
            waiting = self._requests.pop(request_id, None)
            if waiting is not None:
                waiting.callback({"lost": "timeout"})

        timer = self.sim.clock.callLater(REQUEST_TIMEOUT, timeout)
        conn.send(obj)
        answer = await d
        if timer.active():
            timer.cancel()
        if answer.get("lost") == "timeout" and self.conn is conn:
            # Give up on a connection that does not answer.
            self.disconnect()
        return answer

    # -- one operation, with its retries ------------------------------------------------

    async def call(self, op: str, args: dict, rid: str | None = None,
                   session: bool = False, attempts: int = MAX_ATTEMPTS,
                   deadline: float | None = None) -> dict:
        """
        Do C{op} until it gets a definite answer (or C{attempts} run out),
        recorded in the history as one operation.

        @param session: it needs the connection logged in as C{self.user}.
        @param deadline: give up at this time, whatever C{attempts} says.
        @return: the last answer (or C{{"lost": why}}).
        """
        sim = self.sim
        # For login and create_account the history takes the account named.
        user = None if op in ("login", "create_account") else self.user
        record = sim.history.invoke(self.name, op, args, rid=rid, user=user,
                                    token=self.token, at=sim.clock.seconds())
        answer: dict = {"lost": "never sent"}
        node = None
        tries = 0
        for attempt in range(attempts):
            if deadline is not None and sim.clock.seconds() >= deadline:
                break
            if attempt:
                sim.history.attempt(record)
            if self.conn is None and not await self.connect(self.other_server()):
                answer = {"lost": "refused"}
                await self.sleep(self.rng.uniform(0.05, 0.3))
                continue
            if session and not self.logged_in and not await self.restore_session():
                answer = {"lost": "no session"}
                if self.user is None:
                    break  # the account is gone: nothing to retry as
                await self.sleep(self.rng.uniform(0.05, 0.3))
                continue
            node = self.conn.node_id
            tries += 1
            answer = await self.exchange(op, args, rid)
            if answer.get("ok"):
                sim.history.ok(record, answer.get("result"), sim.clock.seconds())
                self._trace(op, args, rid, node, tries, "ok")
                return answer
            error = answer.get("error")
            if error is None:  # lost or timed out: maybe applied
                await self.sleep(self.rng.uniform(0.01, 0.2))
                continue
            code = error.get("code")
            if code == errors.NOT_LEADER:
                leader = (error.get("leader") or {}).get("id")
                await self.connect(leader or self.other_server())
                continue
            if code == errors.UNAVAILABLE:
                await self.sleep(self.rng.uniform(0.05, 0.4))
                if self.rng.random() < 0.5:
                    await self.connect(self.other_server())
                continue
            if code == errors.NOT_LOGGED_IN and session and attempt + 1 < attempts:
                # The session may have been evicted, or ended on another
                # server; log in again and retry (the rid keeps it once).
                self.logged_in = False
                self.token = None
                continue
            sim.history.fail(record, code, sim.clock.seconds())
            self._trace(op, args, rid, node, tries, "error " + code)
            return answer
        at = sim.clock.seconds()
        error = answer.get("error")
        if error is not None:
            sim.history.fail(record, error.get("code"), at)
            self._trace(op, args, rid, node, tries, "gave up: " + error.get("code"))
        else:
            sim.history.unknown(record, at, answer.get("lost"))
            self._trace(op, args, rid, node, tries, "unknown: " + answer.get("lost", "?"))
        return answer

    def _trace(self, op: str, args: dict, rid, node, tries: int, outcome: str) -> None:
        shown = " ".join(
            "%s=%s" % (k, "***" if k in ("password", "token") else v if not isinstance(v, list)
                       else ",".join(map(str, v)))
            for k, v in sorted(args.items())
        )
        self.sim.trace("%s %s%s%s%s @%s%s -> %s" % (
            self.name, op, " " if shown else "", shown,
            "" if rid is None else " rid=" + rid,
            node if node is not None else "-",
            "" if tries <= 1 else " (%d tries)" % (tries,),
            outcome,
        ))

    async def restore_session(self) -> bool:
        """
        Log the current connection in as C{self.user}: resume by token, or
        log in with the password.
        """
        if self.user is None:
            return False
        if self.token is not None:
            answer = await self.call("resume", {"token": self.token}, attempts=1)
            if answer.get("ok"):
                self.user = answer["result"]["username"]
                self.logged_in = True
                return True
            if "lost" in answer or self.conn is None:
                return False
        answer = await self.call("login", {"username": self.user, "password": self.password},
                                 attempts=2)
        if answer.get("ok"):
            self.token = answer["result"]["token"]
            self.logged_in = True
            return True
        code = (answer.get("error") or {}).get("code")
        if code == errors.BAD_CREDENTIALS:
            self.forget(self.user)
        return False

    def forget(self, name: str | None) -> None:
        self.accounts.pop(name, None)
        if name == self.user:
            self.user = self.password = self.token = None
            self.logged_in = False

    # -- the workload -------------------------------------------------------------------

    def next_rid(self) -> str:
        self._rid += 1
        return "%s-%d" % (self.name, self._rid)

    async def run(self) -> None:
        # Spread the quota over the faulty phase, where the faults are.
        pause = self.sim.settings.faulty / max(1, self.quota)
        await self.sleep(self.rng.uniform(0.0, 0.6))
        while self.sim.accepting and self.started < self.quota:
            self.started += 1
            await self.step()
            await self.sleep(self.rng.uniform(0.05, 1.5) * pause)
        self.done = True

    async def step(self) -> None:
        rng = self.rng
        if self.user is None:
            if self.accounts and rng.random() < 0.75:
                return await self.login(rng.choice(sorted(self.accounts)))
            if rng.random() < 0.1:
                return await self.list_accounts()
            return await self.create_account()
        choice = rng.choices(
            ("send", "read", "history", "list", "delete", "logout", "relogin", "wrong-login",
             "create", "delete-account", "switch"),
            (30, 14, 8, 4, 7, 3, 4, 2, 5, 2, 5),
        )[0]
        if choice == "send":
            self._texts += 1
            # Mostly to a name some client created, sometimes to any.
            names = self.sim.names
            to = rng.choice(names) if names and rng.random() < 0.8 else rng.choice(
                NAMES + ("nobody",))
            await self.write("send", {"to": to, "text": "%s:%d" % (self.name, self._texts)})
        elif choice == "read":
            await self.write("read", {"limit": rng.randint(1, 4)})
        elif choice == "history":
            args: dict = {"limit": rng.randint(1, 8)}
            if rng.random() < 0.5:
                args["with"] = rng.choice(NAMES)
            answer = await self.call("history", args, session=True)
            self._note_messages(answer)
        elif choice == "list":
            await self.list_accounts()
        elif choice == "delete":
            if self.seen:
                ids = rng.sample(self.seen, min(len(self.seen), rng.randint(1, 2)))
                answer = await self.write("delete_messages", {"ids": ids})
                if answer.get("ok"):
                    self.seen = [i for i in self.seen if i not in ids]
        elif choice == "logout":
            await self.write("logout", {})
            self.user = self.password = self.token = None
            self.logged_in = False
        elif choice == "relogin" and self.accounts:
            await self.login(rng.choice(sorted(self.accounts)))
        elif choice == "wrong-login":
            await self.call("login", {"username": rng.choice(NAMES), "password": "wrong"})
            self.logged_in = False  # whatever it answered, the session is unsure
        elif choice == "create":
            await self.create_account()
        elif choice == "delete-account":
            answer = await self.write("delete_account", {"password": self.password})
            if answer.get("ok"):
                self.forget(self.user)
        elif choice == "switch":
            if await self.connect(self.other_server()):
                await self.restore_session()

    async def write(self, op: str, args: dict) -> dict:
        answer = await self.call(op, args, rid=self.next_rid(), session=True)
        if answer.get("ok"):
            self._note_messages(answer)
        return answer

    def _note_messages(self, answer: dict) -> None:
        result = answer.get("result") or {}
        if "message" in result:
            self._remember(result["message"].get("id"))
        for message in result.get("messages") or ():
            self._remember(message.get("id"))

    async def create_account(self) -> None:
        self._passwords += 1
        # A few names, so that they collide (username_taken), but not so
        # few that a client without an account spends its time colliding.
        name = self.rng.choice(NAMES) + self.rng.choice(("", "", "", "2", "3"))
        password = "pw-%s-%d" % (self.name, self._passwords)
        answer = await self.call("create_account", {"username": name, "password": password},
                                 rid=self.next_rid())
        if answer.get("ok"):
            created = answer["result"]["username"]
            self.accounts[created] = password
            if created not in self.sim.names:
                self.sim.names.append(created)
        elif "lost" in answer or (answer.get("error") or {}).get("code") == errors.UNAVAILABLE:
            self.accounts.setdefault(name, password)  # maybe; a login will tell

    async def login(self, name: str) -> None:
        password = self.accounts[name]
        answer = await self.call("login", {"username": name, "password": password})
        if answer.get("ok"):
            self.user, self.password = name, password
            self.token = answer["result"]["token"]
            self.logged_in = True
        elif (answer.get("error") or {}).get("code") == errors.BAD_CREDENTIALS:
            self.accounts.pop(name, None)

    async def list_accounts(self) -> None:
        pattern = self.rng.choice(("*", "a*", "*a*", "?o?", "*~*"))
        await self.call("list_accounts", {"pattern": pattern})


# -- the nemesis ------------------------------------------------------------------------------


class Nemesis:
    """
    Picks faults at random times during the faulty phase, and undoes them
    all at the heal.
    """

    def __init__(self, sim: Simulation, weights: dict[str, int]) -> None:
        self.sim = sim
        self.rng = random.Random("replichat-sim-nemesis:%d" % (sim.seed,))
        self.weights = weights
        self.slow_net_until = 0.0
        self.slow_sync: dict[int, float] = {}  # node -> until
        # node -> how it is to crash: at its next fsync ("before" or "after"
        # it completes, or "soon" after), or when a client gets an answer
        # of its to a write ("ack").
        self.armed: dict[int, str] = {}
        self.outage = False

    async def run(self, until: float) -> None:
        sim = self.sim
        kinds = sorted(self.weights)
        weights = [self.weights[k] for k in kinds]
        await sim.sleep(self.rng.uniform(0.8, 1.5))
        while sim.clock.seconds() < until:
            kind = self.rng.choices(kinds, weights)[0]
            getattr(self, "fault_" + kind.replace("-", "_"))()
            await sim.sleep(self.rng.uniform(0.2, 1.4))

    def count(self, kind: str, text: str) -> None:
        self.sim.faults[kind] += 1
        self.sim.trace(text)

    def running(self) -> list[int]:
        return sorted(self.sim.cluster.nodes)

    def later(self, seconds: float, f, *args) -> None:
        # Undo a fault later, unless the heal did already.
        epoch = self.sim.heal_epoch
        self.sim.clock.callLater(
            seconds, lambda: None if self.sim.heal_epoch != epoch else f(*args)
        )

    # -- crashes ---------------------------------------------------------------------

    def _crash(self, node_id: int, kind: str, how: str = "") -> None:
        self.count(kind, "crash %d%s" % (node_id, how))
        self.sim.crash(node_id)
        self.later(self.rng.uniform(0.2, 3.0), self.sim.restart, node_id)

    def fault_crash(self) -> None:
        running = self.running()
        if running and not self.outage:
            self._crash(self.rng.choice(running), "crash")

    def fault_crash_leader(self) -> None:
        leaders = [n for n in self.running() if self.sim.cluster.nodes[n].role == "leader"]
        if leaders and not self.outage:
            self._crash(self.rng.choice(leaders), "crash-leader", " (leader)")

    def _target(self) -> int | None:
        running = self.running()
        leaders = [n for n in running if self.sim.cluster.nodes[n].role == "leader"]
        if leaders and self.rng.random() < 0.75:
            return self.rng.choice(leaders)
        return self.rng.choice(running) if running else None

    def fault_crash_at_sync(self) -> None:
        node = self._target()
        if node is None or self.outage or node in self.armed:
            return
        mode = self.rng.choice(("before", "after"))
        self.armed[node] = mode
        self.sim.trace("arm crash of %d at its next fsync (%s it completes)" % (node, mode))
        self.sim.update_sync_hook(node)
        self.later(1.0, self._disarm, node)

    def fault_crash_soon_after_sync(self) -> None:
        node = self._target()
        if node is None or self.outage or node in self.armed:
            return
        self.armed[node] = "soon"
        self.sim.trace("arm crash of %d just after its next fsync" % (node,))
        self.sim.update_sync_hook(node)
        self.later(1.0, self._disarm, node)

    def fault_crash_after_ack(self) -> None:
        leaders = [n for n in self.running() if self.sim.cluster.nodes[n].role == "leader"]
        if not leaders or self.outage:
            return
        node = self.rng.choice(leaders)
        if node in self.armed:
            return
        self.armed[node] = "ack"
        self.sim.trace("arm crash of %d when a client receives its next write's answer" % (node,))
        self.later(1.0, self._disarm, node)

    def acked(self, conn: ClientConnection, answer: dict) -> None:
        """
        A client just received C{answer} from C{conn}'s server.
        """
        node_id = conn.node_id
        if self.armed.get(node_id) != "ack" or not answer.get("ok"):
            return
        if conn.process is not self.sim.cluster.processes.get(node_id):
            return
        if conn.ops.get(answer.get("id")) not in checker.WRITES:
            return
        del self.armed[node_id]
        self._crash(node_id, "crash-after-ack", " (as a client receives its answer)")

    def _disarm(self, node_id: int) -> None:
        if self.armed.pop(node_id, None) is not None and node_id in self.sim.cluster.nodes:
            self.sim.update_sync_hook(node_id)

    def at_sync(self, node_id: int, sync) -> bool:
        """
        The sync hook: crash if armed, stall if slow; false to sync as usual.
        """
        sim = self.sim
        mode = self.armed.get(node_id)
        if mode in ("before", "after", "soon"):
            del self.armed[node_id]
        if mode == "before":
            self.count("crash-at-sync", "crash %d in its fsync (lost)" % (node_id,))
            node = sim.cluster.nodes[node_id]
            sim.cluster.crash_at_sync(node_id, sync, durable=False)
            sim.crashed(node_id, node)
            self.later(self.rng.uniform(0.2, 3.0), sim.restart, node_id)
            return True
        if mode == "after":
            self.count("crash-at-sync", "crash %d after its fsync (nothing sent)" % (node_id,))
            node = sim.cluster.nodes[node_id]
            sim.cluster.crash_at_sync(node_id, sync, durable=True)
            sim.crashed(node_id, node)
            self.later(self.rng.uniform(0.2, 3.0), sim.restart, node_id)
            return True
        if mode == "soon":
            sync()
            delay = self.rng.uniform(0.0, 0.003)
            self.sim.clock.callLater(delay, self._crash_soon, node_id, sim.cluster.nodes[node_id])
            return True
        until = self.slow_sync.get(node_id, 0.0)
        if sim.clock.seconds() < until:
            seconds = self.rng.choice((0.002, 0.02, 0.1, 0.3, 0.7)) * self.rng.uniform(0.5, 1.5)
            sim.stalls += 1
            sim.cluster.stall_sync(node_id, seconds, sync)
            return True
        return False

    def _crash_soon(self, node_id: int, node) -> None:
        if self.sim.cluster.nodes.get(node_id) is node:
            self._crash(node_id, "crash-soon-after-sync", " (just after an fsync)")

    def fault_full_outage(self) -> None:
        if self.outage:
            return
        self.outage = True
        self.count("full-outage", "full outage begins")
        order = self.running()
        self.rng.shuffle(order)
        at = 0.0
        for node in order:
            at += self.rng.uniform(0.02, 0.8)
            self.later(at, self._outage_crash, node)
        restart = sorted(self.sim.server_ids)
        self.rng.shuffle(restart)
        at += self.rng.uniform(0.3, 2.0)
        for node in restart:
            self.later(at, self.sim.restart, node)
            at += self.rng.uniform(0.0, 1.5)
        self.later(at, self._outage_over)

    def _outage_crash(self, node_id: int) -> None:
        if node_id in self.sim.cluster.nodes:
            self.sim.trace("crash %d (outage)" % (node_id,))
            self.sim.crash(node_id)

    def _outage_over(self) -> None:
        self.outage = False

    # -- the network ------------------------------------------------------------------------

    def _split(self) -> tuple[list[int], list[int]]:
        ids = list(self.sim.server_ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        return sorted(ids[:cut]), sorted(ids[cut:])

    def _stalls(self) -> bool:
        return self.rng.random() < 0.5

    def fault_partition(self) -> None:
        left, right = self._split()
        reset = not self._stalls()
        self.count("partition", "partition {%s} | {%s} (%s)" % (
            ",".join(map(str, left)), ",".join(map(str, right)), "reset" if reset else "stalled"))
        self.sim.cluster.network.partition(left, right, reset=reset)
        self.later(self.rng.uniform(0.5, 4.0), self.sim.heal_network)

    def fault_one_way(self) -> None:
        a, b = self.rng.sample(list(self.sim.server_ids), 2)
        self.count("one-way", "block %d -> %d" % (a, b))
        self.sim.cluster.network.block(a, b)
        self.later(self.rng.uniform(0.3, 3.0), self.sim.heal_network)

    def fault_bridge(self) -> None:
        ids = list(self.sim.server_ids)
        if len(ids) < 3:
            return
        self.rng.shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        cut = self.rng.randint(1, len(rest) - 1)
        left, right = sorted(rest[:cut]), sorted(rest[cut:])
        reset = not self._stalls()
        self.count("bridge", "partition {%s} | {%s}, %d reaches both (%s)" % (
            ",".join(map(str, left)), ",".join(map(str, right)), bridge,
            "reset" if reset else "stalled"))
        self.sim.cluster.network.partition(left, right, reset=reset)
        self.later(self.rng.uniform(0.5, 4.0), self.sim.heal_network)

    def fault_reset(self) -> None:
        a, b = sorted(self.rng.sample(list(self.sim.server_ids), 2))
        if self.sim.cluster.network.reset(a, b):
            self.count("reset", "reset %d-%d" % (a, b))

    def fault_client_reset(self) -> None:
        open_ = [c for c in self.sim.clients if c.conn is not None and c.conn.client_open]
        if open_:
            client = self.rng.choice(open_)
            self.count("client-reset", "reset %s@%d" % (client.name, client.conn.node_id))
            client.conn.reset()

    def fault_pause(self) -> None:
        running = [n for n in self.running() if n not in self.sim.cluster.network.paused]
        if not running:
            return
        node = self.rng.choice(running)
        seconds = self.rng.choice((0.2, 0.6, 1.2, 2.5)) * self.rng.uniform(0.7, 1.3)
        self.count("pause", "pause %d for %.2fs" % (node, seconds))
        self.sim.cluster.network.pause(node)
        self.later(seconds, self.sim.resume, node)

    def fault_slow_fsync(self) -> None:
        node = self._target()
        if node is None:
            return
        seconds = self.rng.uniform(1.0, 4.0)
        self.slow_sync[node] = self.sim.clock.seconds() + seconds
        self.count("slow-fsync", "slow fsync on %d for %.2fs" % (node, seconds))
        self.sim.update_sync_hook(node)

    def fault_slow_net(self) -> None:
        seconds = self.rng.uniform(1.0, 4.0)
        self.slow_net_until = self.sim.clock.seconds() + seconds
        self.count("slow-net", "slow network for %.2fs" % (seconds,))

    def heal(self) -> None:
        self.slow_net_until = 0.0
        self.slow_sync.clear()
        self.armed.clear()
        self.outage = False


# -- the run ---------------------------------------------------------------------------------


class Simulation:
    """
    One seed's run (see the module docstring); L{run_seed} drives it.
    """

    def __init__(self, seed: int, settings: Settings) -> None:
        self.seed = seed
        self.settings = settings
        self.net_rng = random.Random("replichat-sim-net:%d" % (seed,))
        self.cluster = SimCluster(settings.servers, timing=Timing(0.1, 0.5))
        self.clock = self.cluster.clock
        self.server_ids = tuple(range(1, settings.servers + 1))
        self.history = checker.History()
        self.trace = _Trace(self.clock)
        self.faults: Counter = Counter()
        self.anomalies: list[SimAnomaly] = []
        self.stalls = 0
        self.heal_epoch = 0
        self.accepting = True
        self.handlers: dict[int, ChatHandler] = {}
        self.connections: dict[int, list[ClientConnection]] = {}
        self.names: list[str] = []  # usernames created, in order (clients send to them)
        self.ghosts: list = []  # Replicas of crashed servers, as they died
        self.strict = not (SPLITTING & set(SCENARIOS[settings.scenario]))
        self._serial = 0
        self._roles: dict[int, tuple] = {}
        self.config = parse_config({
            "nodes": {i: {"host": "127.0.0.%d" % (i,), "client_port": 7000 + i,
                          "peer_port": 7100 + i} for i in self.server_ids},
            "data_dir": "unused",
        })
        self.hasher = SimHasher()
        tokens = random.Random("replichat-sim-tokens:%d" % (seed,))
        # Session tokens from the seed, so the log (which holds their
        # hashes) is the same on every run.
        self.token = lambda nbytes: "tok-%032x" % (tokens.getrandbits(128),)
        self.nemesis = Nemesis(self, SCENARIOS[settings.scenario])
        per_client = max(1, settings.ops // settings.clients)
        self.clients = [SimClient(self, "c%d" % (i,), per_client)
                        for i in range(1, settings.clients + 1)]
        self._base_delay = {
            (a, b): self.net_rng.uniform(0.0001, 0.002)
            for a in self.server_ids for b in self.server_ids if a != b
        }
        network = self.cluster.network
        network.delay = self.peer_delay
        network.reconnect_delay = lambda: self.net_rng.uniform(0.02, 0.3)
        network.retransmit_delay = lambda: self.net_rng.uniform(0.0, 0.3)
        self.cluster.on_fatal = self._on_fatal

    # -- time ------------------------------------------------------------------------

    def sleep(self, seconds: float) -> Deferred:
        d: Deferred = Deferred()
        self.clock.callLater(seconds, d.callback, None)
        return d

    def peer_delay(self, src: int, dst: int) -> float:
        delay = self._base_delay.get((src, dst), 0.0005) + self.net_rng.expovariate(2000.0)
        if self.clock.seconds() < self.nemesis.slow_net_until:
            delay += self.net_rng.uniform(0.002, 0.04)
        return delay

    def client_delay(self) -> float:
        delay = self.net_rng.uniform(0.0001, 0.001)
        if self.clock.seconds() < self.nemesis.slow_net_until:
            delay += self.net_rng.uniform(0.001, 0.02)
        return delay

    # -- servers ---------------------------------------------------------------------

    def start(self, node_id: int) -> None:
        try:
            node = self.cluster.start(node_id)
        except Exception as error:
            self.flag("recovery", "node %d cannot start: %s" % (node_id, error))
            self.cluster.nodes.pop(node_id, None)
            self.cluster.processes.pop(node_id, None)
            self.cluster.network.detach(node_id)
            return
        self.handlers[node_id] = ChatHandler(
            node, self.hasher, self.config, self.config.limits, self.cluster.processes[node_id],
            token=self.token,
        )
        self.connections[node_id] = []
        self.update_sync_hook(node_id)

    def restart(self, node_id: int) -> None:
        if node_id not in self.cluster.nodes:
            self.trace("restart %d" % (node_id,))
            self.start(node_id)

    def crash(self, node_id: int) -> None:
        node = self.cluster.nodes.get(node_id)
        if node is not None:
            self.cluster.crash(node_id)
            self.crashed(node_id, node)

    def crashed(self, node_id: int, node) -> None:
        """
        A server died: its client connections die with it; remember what
        it had committed.
        """
        if self.strict:
            disk = self.cluster.disks[node_id]
            self.ghosts.append(checker.Replica.of_storage(
                node_id, disk.log, disk.snapshots, node.commit_index))
        self.handlers.pop(node_id, None)
        for conn in self.connections.pop(node_id, []):
            conn.server_died()
        self._roles.pop(node_id, None)

    def resume(self, node_id: int) -> None:
        if node_id in self.cluster.network.paused:
            self.trace("resume %d" % (node_id,))
            self.cluster.network.resume(node_id)

    def heal_network(self) -> None:
        network = self.cluster.network
        if network.blocked:
            self.trace("heal")
            network.heal()

    def update_sync_hook(self, node_id: int) -> None:
        if node_id in self.cluster.processes:
            self.cluster.set_sync_hook(node_id, partial(self.nemesis.at_sync, node_id))

    def _on_fatal(self, node_id: int, reason: str) -> None:
        # Called inside the node's own code: act in a turn of our own.  The
        # server exits; systemd starts it again.
        node = self.cluster.nodes.get(node_id)
        self.trace("fatal %d: %s" % (node_id, reason))
        self.flag("fatal", "node %d stopped itself: %s" % (node_id, reason))

        def exit_and_restart() -> None:
            if self.cluster.nodes.get(node_id) is node:
                self.crash(node_id)
                self.clock.callLater(1.0, self.restart, node_id)

        self.clock.callLater(0, exit_and_restart)

    def open_connection(self, client: SimClient, node_id: int) -> ClientConnection:
        self._serial += 1
        conn = ClientConnection(self, client, node_id, self._serial)
        self.connections[node_id].append(conn)
        return conn

    # -- observing -------------------------------------------------------------------

    def flag(self, kind: str, text: str) -> None:
        self.anomalies.append(SimAnomaly(kind, text))

    def observe(self) -> None:
        for node_id in sorted(self.cluster.nodes):
            node = self.cluster.nodes[node_id]
            seen = (node.role, node.epoch, node.leader_id)
            if self._roles.get(node_id) != seen:
                self._roles[node_id] = seen
                role, epoch, leader = seen
                if role == "follower":
                    what = "follower of %d" % (leader,)
                else:
                    what = role
                self.trace("node %d %s epoch %d" % (node_id, what, epoch))

    def converged(self) -> bool:
        """
        Every server runs, one leads and serves, and all have committed and
        applied its whole log.
        """
        nodes = self.cluster.nodes
        if sorted(nodes) != list(self.server_ids) or self.cluster.network.paused:
            return False
        leader = self.cluster.leader()
        if leader is None:
            return False
        target = leader.disk_log.last_index
        epoch = leader.disk_log.last_epoch
        if not all(
            n.failed is None and n.commit_index == target and n.state.applied_index == target
            and n.disk_log.last_epoch == epoch
            for n in nodes.values()
        ):
            return False
        # Equal indexes are not equal logs (a server can be stuck on a
        # divergent suffix of the same length): compare the states too.
        digest = leader.state.digest()
        return all(n.state.digest() == digest for n in nodes.values())

    def idle(self) -> bool:
        return all(c.done for c in self.clients)

    def run_until(self, limit: float, predicate=None) -> bool:
        """
        Run events until C{limit} or until C{predicate()} holds.
        """
        advance = self.cluster.advance_to_next
        observe = self.observe
        while True:
            if predicate is not None and predicate():
                return True
            try:
                if not advance(limit):
                    return predicate is not None and predicate()
            except Exception as error:
                # A real server survives an exception in a callback (AMP
                # and the reactor log it); here it is a bug found.
                self.trace("exception: %r" % (error,))
                self.flag("exception", "%s: %s" % (type(error).__name__, error))
            observe()

    # -- the phases --------------------------------------------------------------------

    def spawn(self, coroutine, what: str) -> Deferred:
        d = Deferred.fromCoroutine(coroutine)

        def failed(failure) -> None:
            self.flag("simulator", "%s failed: %s" % (what, failure.getTraceback()))

        d.addErrback(failed)
        return d

    def heal_all(self) -> None:
        self.heal_epoch += 1
        self.nemesis.heal()
        self.trace("heal all")
        self.cluster.network.heal()
        for node_id in sorted(self.cluster.network.paused):
            self.resume(node_id)
        for node_id in self.server_ids:
            self.restart(node_id)
            self.update_sync_hook(node_id)

    def run(self) -> tuple[bool, Any]:
        """
        The phases of a run; whether it converged, and the checker's report.
        """
        s = self.settings
        self.trace("start %d servers, %d clients, scenario %s, mode %s"
                   % (s.servers, s.clients, s.scenario, s.mode))
        for node_id in self.server_ids:
            self.start(node_id)
        for client in self.clients:
            self.spawn(client.run(), client.name)
        self.spawn(self.nemesis.run(s.faulty), "nemesis")
        self.run_until(s.faulty)
        self.accepting = False
        self.heal_all()
        healed = self.clock.seconds()
        if s.mode == "liveness":
            self.require_progress(healed + s.progress)
        converged = self.quiet(healed + s.quiet)
        self.trace("end: %s" % ("converged" if converged else "did not converge"))
        if not converged and s.mode == "liveness":
            self.flag("not-converged", "did not converge within %.1fs of the heal: %s" % (
                s.quiet, self._positions()))
        replicas = [checker.Replica.of_node(self.cluster.nodes[n])
                    for n in sorted(self.cluster.nodes)]
        # A read acknowledged on a side that lost is not re-proposed (see
        # replichat.merge); the checker expects that only if told.
        split = bool(SPLITTING & set(self.faults))
        report = checker.check(self.history, replicas, converged=converged, partitioned=split)
        if self.strict:
            self.check_never_cut(replicas)
        return converged, report

    def require_progress(self, deadline: float) -> None:
        """
        Liveness: a fresh write, retried as a client would, commits before
        C{deadline}.
        """
        probe = SimClient(self, "probe", 0)
        committed: list[bool] = []

        async def write() -> None:
            answer = await probe.call(
                "create_account", {"username": "probe", "password": "pw-probe"},
                rid=probe.next_rid(), attempts=1000, deadline=deadline)
            if answer.get("ok"):
                committed.append(True)

        self.spawn(write(), "probe")
        if not self.run_until(deadline, lambda: bool(committed)):
            self.flag("no-progress", "no write committed within %.1fs of the heal"
                      % (self.settings.progress,))

    def settled(self) -> bool:
        return self.idle() and self.converged()

    def quiet(self, deadline: float) -> bool:
        """
        Run until the clients are done and the servers converged (and still
        are a little later, for the last pushes and heartbeats), or until
        C{deadline}; whether they converged.
        """
        while self.run_until(deadline, self.settled):
            self.run_until(self.clock.seconds() + 0.5)
            if self.settled() or self.clock.seconds() >= deadline:
                break
        return self.converged()

    def check_never_cut(self, replicas: list) -> None:
        """
        Every entry a server had committed when it crashed is the entry at
        its index in every final replica that holds that index committed.
        """
        final: dict[int, tuple] = {}
        for replica in replicas:
            for entry in replica.entries:
                if entry.index <= replica.commit_index:
                    final.setdefault(entry.index, (replica.node_id, entry))
        for ghost in self.ghosts:
            for entry in ghost.entries:
                if entry.index > ghost.commit_index or entry.index not in final:
                    continue
                holder, kept = final[entry.index]
                if (kept.epoch, kept.data) != (entry.epoch, entry.data):
                    self.flag(checker.DIVERGED, (
                        "node %d had committed entry %d (epoch %d: %s) when it crashed, but "
                        "node %d ends with entry %d of epoch %d there: %s"
                        % (ghost.node_id, entry.index, entry.epoch, entry.data[:100].decode(
                            "utf-8", "replace"), holder, entry.index, kept.epoch,
                           kept.data[:100].decode("utf-8", "replace"))))
                    return

    def _positions(self) -> str:
        parts = []
        for node_id in self.server_ids:
            node = self.cluster.nodes.get(node_id)
            if node is None:
                parts.append("%d down" % (node_id,))
            else:
                parts.append("%d %s commit %d last %d" % (
                    node_id, node.role, node.commit_index, node.disk_log.last_index))
        return ", ".join(parts)


@contextmanager
def _capture_logged_failures(sim: Simulation) -> Iterator[None]:
    # A failure logged by a server (a loop callback that raised, a push
    # observer that failed) is a bug even when the run goes on.
    # "Unhandled error in Deferred" is logged when the Deferred is garbage
    # collected, so collect before (the previous run's garbage) and after
    # (this run's): each is blamed on the run that made it.
    def observe(event: dict) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            unhandled = event.get("log_namespace") == "twisted.internet.defer"
            kind = "unhandled-error" if unhandled else "exception"
            sim.flag(kind, "logged: %s: %s" % (
                failure.type.__name__, failure.getErrorMessage()))

    gc.collect()
    globalLogPublisher.addObserver(observe)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)


def run_seed(seed: int, settings: Settings | None = None, **overrides: Any) -> RunResult:
    """
    Run one seed; deterministic: the same seed and settings give the same
    trace.

    @param overrides: L{Settings} fields (C{mode}, C{scenario}, C{servers},
        C{ops}...), for convenience.
    """
    base = settings or Settings()
    if overrides:
        base = Settings(**{**{a.name: getattr(base, a.name) for a in Settings.__attrs_attrs__},
                           **overrides})
    settings = base.for_seed(seed)
    started = time.perf_counter()
    sim = Simulation(seed, settings)
    with _capture_logged_failures(sim):
        converged, report = sim.run()
    anomalies = tuple(report.anomalies) + tuple(sim.anomalies)
    for anomaly in anomalies:
        sim.trace("anomaly %s: %s" % (anomaly.kind, anomaly.text))
    ops = Counter()
    for op in sim.history.ops:
        ops["%s %s" % (op.op, op.status or "pending")] += 1
    return RunResult(
        seed=seed,
        settings=settings,
        anomalies=anomalies,
        trace=tuple(sim.trace.lines),
        faults=dict(sim.faults),
        ops=dict(ops),
        simulated=sim.clock.seconds(),
        wall=time.perf_counter() - started,
        converged=converged,
        stalls=sim.stalls,
        planted=tuple(sorted(failpoints.active)),
        report=report,
        history=sim.history,
    )


# -- bin/simulate ------------------------------------------------------------------------------


@define
class Summary:
    """
    Totals over many seeds.
    """

    seeds: int = 0
    faults: Counter = field(factory=Counter)
    ops: Counter = field(factory=Counter)
    anomalies: list = field(factory=list)  # (seed, anomaly)
    failed: list = field(factory=list)  # RunResults with anomalies
    simulated: float = 0.0
    wall: float = 0.0
    converged: int = 0
    stalls: int = 0
    by_mode: Counter = field(factory=Counter)

    def add(self, result: RunResult) -> None:
        self.seeds += 1
        self.faults.update(result.faults)
        self.ops.update(result.ops)
        self.simulated += result.simulated
        self.wall += result.wall
        self.converged += result.converged
        self.stalls += result.stalls
        self.by_mode[result.settings.mode] += 1
        for anomaly in result.anomalies:
            self.anomalies.append((result.seed, anomaly))
        if result.anomalies:
            self.failed.append(result)

    def describe(self) -> str:
        lines = ["seeds run: %d (%s); converged after heal: %d" % (
            self.seeds, ", ".join("%s %d" % kv for kv in sorted(self.by_mode.items())),
            self.converged)]
        lines.append("faults injected: %d" % (sum(self.faults.values()),))
        lines += ["  %-24s %d" % kv for kv in sorted(self.faults.items())]
        lines.append("  (fsyncs stalled by slow-fsync: %d)" % (self.stalls,))
        by_op: dict[str, Counter] = {}
        for key, count in self.ops.items():
            op, status = key.split(" ", 1)
            by_op.setdefault(op, Counter())[status] += count
        lines.append("operations: %d" % (sum(self.ops.values()),))
        for op in sorted(by_op):
            lines.append("  %-16s %s" % (op, ", ".join(
                "%s %d" % kv for kv in sorted(by_op[op].items()))))
        kinds = Counter(a.kind for _, a in self.anomalies)
        lines.append("anomalies: %d%s" % (len(self.anomalies), "" if not kinds else " (%s)" % (
            ", ".join("%s %d" % kv for kv in sorted(kinds.items())),)))
        by_kind: dict[str, list[int]] = {}
        for seed, anomaly in self.anomalies:
            seeds = by_kind.setdefault(anomaly.kind, [])
            if seed not in seeds:
                seeds.append(seed)
        for kind in sorted(by_kind):
            seeds = by_kind[kind]
            lines.append("  %s: seeds %s%s" % (
                kind, " ".join(map(str, seeds[:30])), " ..." if len(seeds) > 30 else ""))
        ratio = self.simulated / self.wall if self.wall else 0.0
        lines.append("simulated %.1fs in %.1fs wall: %.1f simulated seconds per wall second, "
                     "%.1f seeds/s" % (self.simulated, self.wall, ratio,
                                       self.seeds / self.wall if self.wall else 0.0))
        return "\n".join(lines)


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
                        clients=options.clients, ops=options.ops, faulty=options.faulty)
    planted = failpoints.planted(options.plant) if options.plant else _nothing()
    with planted:
        if options.seed is not None:
            return _one(options, settings)
        return _many(options, settings)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


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
