# -*- test-case-name: tests.test_chaos -*-
"""
A chaos client that records what it does: L{RecordingClient} keeps one
connection at a time to a real server, follows the leader, resumes its
session on a new connection, and records every op in the history as sent
and as answered.  A write is retried with the same rid until it is
answered definitely (L{RecordingClient.write}); a login is redone as a new
op.  What the clients know together is L{Shared}.

The random mix of ops the clients do is
L{replichat.testing.chaosworkload}.
"""

from __future__ import annotations

import collections
import random
import time

import attrs
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.task import deferLater

from replichat.testing.chaosconnection import LineConnection, RequestTimeout, client_endpoint
from replichat.testing.chaosservers import ChaosCluster
from replichat.testing.history import WRITES

#: Seconds a client waits for one answer before the outcome is unknown:
#: longer than a failover, short enough that a client stuck on a stopped
#: server soon tries another.
REQUEST_TIMEOUT = 2.0
#: Seconds a client keeps retrying one write (same rid) before giving up.
WRITE_DEADLINE = 10.0


@attrs.define(eq=False)
class Shared:
    """
    What the clients know together: accounts acknowledged (name ->
    password), and the leader last heard of.
    """

    accounts: dict = attrs.field(factory=dict)
    leader: int | None = None


class RecordingClient:
    """
    One client: one connection at a time, one logical op at a time, each
    recorded in the history as sent and as answered.

    A write carries a rid and is one history op however often it is sent: a
    retry (after C{not_leader}, C{unavailable}, a timeout or a lost
    connection, on this server or another) reuses the rid and counts as one
    more attempt.

    @ivar seen: the ids of the messages each user was seen to have.
    @ivar until: the wall-clock time no write is retried past.
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
        self.trace: list[tuple] = []

    def stop(self) -> None:
        """
        Retry nothing more.
        """
        self.stopping = True

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
        endpoint = client_endpoint(self.reactor, self.cluster[node])
        connection = LineConnection(self.reactor, node, self._on_event)
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
            # (Only a serving leader takes a write: an acknowledged one names it.)
            self.shared.leader = connection.node if op in WRITES else self.shared.leader
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

    # -- writes with retries, and logins -------------------------------------------

    async def write(self, op: str, args: dict, session: str = "always",
                    deadline: float = WRITE_DEADLINE):
        """
        A write: retried with the same rid until answered definitely or
        C{deadline} seconds pass (never past C{until}, the end of the
        workload).

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
