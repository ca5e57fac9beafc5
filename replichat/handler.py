# -*- test-case-name: tests.test_lineproto -*-
"""
What each client op does: check the session, read the state, or turn the
request into a command for the node and wait for its outcome.

The handler is the only place that sees both a connection's session and the
node.  It fills in everything nondeterministic a command needs before it is
logged (the time, a password hash, a session token's hash), so that applying
the command is pure.  Reads are answered from this server's applied state;
writes go through L{Node.propose} and are answered only once committed.

A connection (L{replichat.lineproto.ClientProtocol}) gives the handler a
L{Session} and receives pushed messages through C{push_message}.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from inspect import iscoroutine
from typing import Any, Protocol

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from replichat import errors
from replichat.errors import ChatError
from replichat.requests import MUTATING, Request
from replichat.state import Outcome

#: How long login attempts are remembered for rate limiting, in seconds,
#: and for how many names at most.
LOGIN_WINDOW = 60.0
LOGIN_TABLE_LIMIT = 100_000

#: Password hashes (scrypt, tens of milliseconds of CPU each) one connection
#: may have in progress, and the whole server: past these, requests that
#: need one are refused at once rather than queued behind each other.
HASHES_PER_CONNECTION = 2
HASHES_IN_PROGRESS = 16


class Connection(Protocol):
    """
    What the handler needs of a client connection.  Its protocol calls
    L{ChatHandler.handle}, which answers a read at once (returns the result,
    or raises L{ChatError}) and a write later (returns a Deferred).
    """

    session: "Session"

    def push_message(self, message: dict) -> None: ...


@define
class Session:
    """
    Who a connection is logged in as, if anyone.
    """

    uid: int | None = None
    username: str | None = None
    token_hash: str | None = None


def _result_of(outcome: Outcome) -> dict:
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def token_hash(token: str) -> str:
    """
    The form in which a session token is stored and logged: a token read
    from a log or a snapshot grants nothing.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ChatHandler:
    """
    Runs client ops against a node.

    @param node: the L{replichat.node.Node}.
    @param hasher: a L{replichat.passwords.PasswordHasher}.
    @param cluster: a L{replichat.config.Config} (addresses for C{hello}).
    @param limits: the config's limits.
    @param token: makes a session token from a byte count (a simulation
        passes a seeded one, so that its runs repeat exactly).
    """

    log = Logger()

    def __init__(self, node, hasher, cluster, limits, clock, token=secrets.token_urlsafe) -> None:
        self.node = node
        self.token = token
        self.hasher = hasher
        self.cluster = cluster
        self.limits = limits
        self.clock = clock
        self._online: dict[int, set[Connection]] = {}
        self._login_attempts: dict[str, deque] = {}
        self._hashing: dict[Connection, int] = {}
        node.add_push_observer(self._push)

    # -- connections and pushes ---------------------------------------------

    def connection_lost(self, connection: Connection) -> None:
        """
        Forget a closed connection.
        """
        self._set_session(connection, Session())

    def _set_session(self, connection: Connection, session: Session) -> None:
        old = connection.session.uid
        if old is not None:
            online = self._online.get(old, set())
            online.discard(connection)
            if not online:
                self._online.pop(old, None)
        connection.session = session
        if session.uid is not None:
            self._online.setdefault(session.uid, set()).add(connection)

    def _push(self, uid: int, message: dict) -> None:
        state = self.node.state
        for connection in list(self._online.get(uid, ())):
            if state.session(connection.session.token_hash) is None:
                # Logged out elsewhere, or evicted by newer logins.
                self._set_session(connection, Session())
                continue
            connection.push_message(message)

    # -- dispatch ------------------------------------------------------------

    def handle(self, connection: Connection, request: Request) -> dict | Deferred:
        """
        Run one request.

        Reads are answered at once; writes return a Deferred that fires once
        the write is committed.  Most ops are plain functions: a coroutine
        per request costs more than the rest of a C{send} put together, so
        only the ops that wait for a password hash are coroutines.

        @return: the C{result} object, or a Deferred firing with it.
        @raise ChatError: (or the Deferred fails with it) if refused.
        """
        if request.op in MUTATING:
            self._require_leader()
        result = getattr(self, "op_" + request.op)(connection, request, **request.args)
        if iscoroutine(result):
            return Deferred.fromCoroutine(result)
        return result

    def _require_leader(self) -> None:
        node = self.node
        if node.serving:
            return
        leader = self._leader()
        if leader is None or leader["id"] == node.node_id:
            # No leader, or this one has not committed its marker yet.
            raise ChatError(errors.UNAVAILABLE, "no leader is ready yet; retry shortly")
        raise ChatError(
            errors.NOT_LEADER, "node %d is the leader" % (leader["id"],), leader=leader
        )

    def _leader(self) -> dict | None:
        known = self.node.leader_member()
        if known is None:
            return None
        leader_id, member = known
        return {"id": leader_id, "host": member.host, "port": member.client_port}

    def _session_account(self, connection: Connection) -> Any:
        session = connection.session
        if session.uid is None:
            raise ChatError(errors.NOT_LOGGED_IN, "log in first")
        account = self.node.state.accounts.get(session.uid)
        if account is None or self.node.state.session(session.token_hash) is not account:
            self._set_session(connection, Session())
            raise ChatError(errors.NOT_LOGGED_IN, "this session has ended; log in again")
        return account

    def _commit(self, request: Request, command: dict, dedupe: bool = True) -> Deferred:
        """
        Propose a command carrying the request's rid and fingerprint (unless
        C{dedupe} is false).

        @return: a Deferred firing with the command's result, or failing
            with its error.
        """
        if dedupe and request.rid is not None:
            command["rid"] = request.rid
            command["fp"] = request.fingerprint()
        command.setdefault("ts", self.clock.seconds())
        return self.node.propose(command).addCallback(_result_of)

    # -- ops -----------------------------------------------------------------

    def op_hello(self, connection: Connection, request: Request) -> dict:
        node = self.node
        return {
            "node": node.node_id,
            "role": node.role,
            "epoch": node.epoch,
            "leader": self._leader(),
        }

    def op_cluster(self, connection: Connection, request: Request) -> dict:
        status = self.node.status()
        nodes = [
            {key: row[key] for key in
             ("id", "host", "client_port", "role", "live", "last_index", "commit_index")}
            for row in status["nodes"]
        ]
        return {"leader": self._leader(), "epoch": status["epoch"], "nodes": nodes}

    async def op_create_account(
        self, connection: Connection, request: Request, username: str, password: str
    ) -> dict:
        state = self.node.state
        if request.rid is None and state.account_named(username) is not None:
            # Fail fast on a taken name: hashing costs tens of milliseconds.
            # A request with a rid is refused by the log instead, so that
            # the refusal is remembered: a retry, or a copy of an earlier
            # attempt handed in after a partition (replichat.merge), then
            # gets that answer rather than taking effect.
            raise ChatError(errors.USERNAME_TAKEN, "username %r is taken" % (username,))
        record = await self._hash_work(connection, lambda: self.hasher.hash(password))
        return await self._commit(
            request,
            {"op": "create_account", "who": None, "username": username, "password": record},
        )

    async def op_login(
        self, connection: Connection, request: Request, username: str, password: str
    ) -> dict:
        attempt = self._count_login_attempt(username)
        account = self.node.state.account_named(username)
        record = None if account is None else account.password
        try:
            matched = await self._hash_work(
                connection, lambda: self.hasher.check(password, record)
            )
        except ChatError:
            self._forget_login_attempt(username, attempt)
            raise
        if not matched:
            raise ChatError(errors.BAD_CREDENTIALS, "wrong username or password")
        self._forget_login_attempt(username, attempt)
        token = self.token(32)
        hashed = token_hash(token)
        # Never deduplicated: a retried login must get a session of its own,
        # since the first one's token never reached the client.
        result = await self._commit(
            request, {"op": "login", "who": account.uid, "token_hash": hashed}, dedupe=False
        )
        self._set_session(connection, Session(account.uid, account.username, hashed))
        return {"token": token, "unread": result["unread"]}

    def _count_login_attempt(self, username: str) -> float:
        """
        Count a login attempt for C{username} before its password is checked
        (so pipelined guesses count too), or refuse it if the last minute
        already holds too many attempts that did not succeed.

        The table is ordered by each name's latest attempt (a name moves to
        the end when tried), so expired names are always at the front and
        the sweep stops at the first live one; it is also capped, so a flood
        of new names cannot grow it without bound.
        """
        now = self.clock.seconds()
        table = self._login_attempts
        while table:
            oldest = next(iter(table))
            if table[oldest] and table[oldest][-1] > now - LOGIN_WINDOW:
                break
            del table[oldest]
        attempts = table.pop(username, None) or deque()
        while attempts and attempts[0] <= now - LOGIN_WINDOW:
            attempts.popleft()
        table[username] = attempts
        if len(attempts) >= self.limits.login_attempts_per_minute:
            raise ChatError(
                errors.RATE_LIMITED,
                "too many failed logins for %r; wait a minute" % (username,),
            )
        if len(table) > LOGIN_TABLE_LIMIT:
            del table[next(iter(table))]
        attempts.append(now)
        return now

    def _forget_login_attempt(self, username: str, attempt: float) -> None:
        """
        Uncount an attempt that succeeded or was never checked.
        """
        attempts = self._login_attempts.get(username)
        if attempts is not None and attempt in attempts:
            attempts.remove(attempt)
            if not attempts:
                del self._login_attempts[username]

    async def _hash_work(self, connection: Connection, work) -> object:
        """
        Run a password hash or check, within the per-connection and server
        limits on hashes in progress.
        """
        mine = self._hashing.get(connection, 0)
        if mine >= HASHES_PER_CONNECTION:
            raise ChatError(
                errors.RATE_LIMITED,
                "at most %d password checks may run at once per connection"
                % (HASHES_PER_CONNECTION,),
            )
        if sum(self._hashing.values()) >= HASHES_IN_PROGRESS:
            raise ChatError(errors.RATE_LIMITED, "the server is busy checking passwords; retry")
        self._hashing[connection] = mine + 1
        try:
            return await work()
        finally:
            left = self._hashing[connection] - 1
            if left:
                self._hashing[connection] = left
            else:
                del self._hashing[connection]

    def op_resume(self, connection: Connection, request: Request, token: str) -> dict:
        hashed = token_hash(token)
        account = self.node.state.session(hashed)
        if account is None:
            raise ChatError(errors.BAD_CREDENTIALS, "unknown or expired session token")
        self._set_session(connection, Session(account.uid, account.username, hashed))
        return {"username": account.username, "unread": len(account.unread)}

    def op_logout(self, connection: Connection, request: Request) -> Deferred:
        session = connection.session
        if session.uid is None:
            raise ChatError(errors.NOT_LOGGED_IN, "not logged in")
        self._set_session(connection, Session())
        return self._commit(
            request, {"op": "logout", "who": session.uid, "token_hash": session.token_hash}
        )

    def op_list_accounts(
        self, connection: Connection, request: Request, pattern: str, offset: int, limit: int
    ) -> dict:
        return self.node.state.list_accounts(pattern, offset, limit)

    def op_send(
        self, connection: Connection, request: Request, to: str, text: str
    ) -> Deferred:
        account = self._session_account(connection)
        recipient = self.node.state.account_named(to)
        if recipient is None and request.rid is None:
            # With a rid, the log refuses it (and remembers the refusal).
            raise ChatError(errors.NO_SUCH_USER, "no account is named %r" % (to,))
        return self._commit(
            request,
            {"op": "send", "who": account.uid,
             "to": None if recipient is None else recipient.uid, "text": text},
        )

    def op_read(self, connection: Connection, request: Request, limit: int) -> Deferred:
        account = self._session_account(connection)
        return self._commit(request, {"op": "read", "who": account.uid, "limit": limit})

    def op_history(
        self, connection: Connection, request: Request, limit: int, before: int | None,
        **args: Any,
    ) -> dict:
        account = self._session_account(connection)
        state = self.node.state
        with_uid = None
        if args["with"] is not None:
            other = state.account_named(args["with"])
            if other is None:
                raise ChatError(errors.NO_SUCH_USER, "no account is named %r" % (args["with"],))
            with_uid = other.uid
        return {"messages": state.history(account.uid, with_uid, before, limit)}

    def op_delete_messages(
        self, connection: Connection, request: Request, ids: list[int]
    ) -> Deferred:
        account = self._session_account(connection)
        return self._commit(
            request, {"op": "delete_messages", "who": account.uid, "ids": ids}
        )

    async def op_delete_account(
        self, connection: Connection, request: Request, password: str
    ) -> dict:
        if request.rid is not None and connection.session.uid is None:
            # A retry after the account is gone has no session left to
            # check; the first answer ({} or an error) is all it may learn.
            # A logged-in connection goes the normal way, where a rid of
            # another account's request is refused.
            first = self.node.state.recall(request.rid, request.fingerprint())
            if first is not None:
                return _result_of(first)
        account = self._session_account(connection)
        matched = await self._hash_work(
            connection, lambda: self.hasher.check(password, account.password)
        )
        if not matched:
            raise ChatError(errors.BAD_CREDENTIALS, "wrong password")
        result = await self._commit(request, {"op": "delete_account", "who": account.uid})
        for other in list(self._online.get(account.uid, ())):
            self._set_session(other, Session())
        return result
