# -*- test-case-name: tests.test_chaos -*-
"""
The workload of a chaos run: L{WorkloadClient} is a
L{replichat.testing.chaosclient.RecordingClient} that does a seeded random
mix of ops until the workload ends: logins, new accounts, sends, reads,
history pages, account lists, deletions of messages and of accounts.

Message texts and passwords are unique in the run (C{"c3:17"},
C{"c3-pw-5"}); usernames come from L{USERNAMES}, so they collide on
purpose.
"""

from __future__ import annotations

import random
import traceback

from replichat.testing.chaosclient import RecordingClient, Shared
from replichat.testing.chaosservers import ChaosCluster

#: Usernames the clients draw from: few, so that names collide on purpose.
USERNAMES = ("ann", "bob", "cat", "dan", "eve", "fay")


class WorkloadClient(RecordingClient):
    """
    One client of the workload, doing one op at a time.

    @ivar errors: tracebacks of the client's own failures.
    """

    def __init__(self, name: str, rng: random.Random, cluster: ChaosCluster, history,
                 shared: Shared, reactor) -> None:
        super().__init__(name, rng, cluster, history, shared, reactor)
        self.errors: list[str] = []

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

    # -- the ops -------------------------------------------------------------------

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
