# -*- test-case-name: tests.test_simulate -*-
"""
The simulator's workload: L{SimClient}, a simulated user program doing
random chat operations against the servers and recording what it saw in
the run's history (L{replichat.testing.history}).

Clients use the real handler of the server they are connected to, through
a fake connection that behaves like TCP too
(L{replichat.testing.simclientconn}).  Every write but C{login} carries a
rid (a login is never deduplicated: each attempt needs a session of its
own); a retry (after C{not_leader}, C{unavailable}, a timeout or a lost
connection) reuses it, on the leader named or another server, after
resuming the session there (or logging in again).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from replichat import errors

if TYPE_CHECKING:
    from replichat.testing.sim import Simulation
    from replichat.testing.simclientconn import ClientConnection

#: Usernames clients pick from: few, so that names collide.
NAMES = ("ann", "bob", "cat", "dan", "eve", "fay")

#: Seconds a client waits for an answer before it gives up on a connection.
REQUEST_TIMEOUT = 2.0

#: Attempts of one operation (the first and its retries) before giving up.
MAX_ATTEMPTS = 6


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
