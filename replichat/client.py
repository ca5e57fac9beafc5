# -*- test-case-name: tests.test_client -*-
"""
The client library: a chat session against a replichat cluster.

L{ChatClient} hides the cluster behind one object: it finds the leader,
follows C{not_leader} answers, waits out C{unavailable}, reconnects after a
lost connection, resumes the session there, and retries the very same
request with the very same request id (C{rid}), so the servers can apply it
exactly once.  Every failure it gives up on is a L{ChatError}, so callers
need one C{except} clause.  One connection's framing and request matching
is L{replichat.clientproto.ClientLineProtocol}'s job.
"""

import itertools
from collections import OrderedDict
from uuid import uuid4

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    TimeoutError as DeferredTimeoutError,
    succeed,
)
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionClosed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from replichat.clientproto import (
    ChatError,
    ClientLineProtocol,
    default_endpoint,
    leader_address,
    query_node,
)
from replichat.errors import NOT_LEADER, NOT_LOGGED_IN, UNAVAILABLE

__all__ = [
    "CONNECTION_ERRORS",
    "ChatClient",
    "ChatError",
    "ClientLineProtocol",
    "MUTATING_OPS",
    "ServerUnreachable",
    "query_node",
]

#: Operations that change replicated state, so they carry a C{rid} that makes
#: a retry after a failover safe.  Not C{login}: servers do not deduplicate
#: it (the first attempt's token never reached the client), so a retried
#: login is simply a new login, and the token it returns is the one kept.
MUTATING_OPS = frozenset(
    {"create_account", "send", "read", "delete_messages", "delete_account", "logout"}
)

#: Error codes (client-side, never sent by a server) for giving up.
UNREACHABLE = "unreachable"
CLOSED = "closed"

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 1.0

#: Errors meaning "this connection or server is gone", as opposed to an answer.
CONNECTION_ERRORS = (
    ConnectError,
    ConnectionClosed,
    ConnectingCancelledError,
    DeferredTimeoutError,
    OSError,
)


class ServerUnreachable(ChatError):
    """
    No server could be reached (or none answered) before the deadline.
    """

    def __init__(self, message):
        super().__init__(UNREACHABLE, message)


class ChatClient:
    """
    A chat session against a replichat cluster.

    Every operation method returns a L{Deferred} firing with the operation's
    C{result} dict (DESIGN.md §4), or failing with L{ChatError}.

    @ivar on_message: called once per pushed message id with the message
        dict (the server pushes at least once).
    @ivar on_event: called with other events (C{leader_changed}, ...).
    @ivar on_status: called with a short human sentence when the connection
        changes (connected, lost, session expired).
    @ivar username: the logged-in account, or L{None}.
    @ivar token: the session token, or L{None}.
    @ivar address: the C{(host, port)} connected to, or L{None}.
    @ivar last_hello: the C{hello} result of the connected server.
    """

    log = Logger()

    def __init__(
        self,
        addresses,
        reactor,
        *,
        timeout=10.0,
        connect_timeout=2.0,
        answer_timeout=5.0,
        endpoint_factory=None,
        seen_limit=10000,
    ):
        """
        @param addresses: C{[(host, client_port), ...]} to try, in order.
        @param reactor: provides C{IReactorTime} (and C{IReactorTCP} unless
            C{endpoint_factory} is given).
        @param timeout: seconds one operation may spend retrying in total.
        @param connect_timeout: seconds for a TCP connect and its C{hello}.
        @param answer_timeout: seconds to wait for one answer before the
            server is treated as gone (a stopped server keeps its sockets).
        @param endpoint_factory: C{(host, port) -> IStreamClientEndpoint}.
        @param seen_limit: how many pushed message ids to remember.
        """
        self._addresses = [(host, int(port)) for host, port in addresses]
        if not self._addresses:
            raise ValueError("no server addresses")
        self._clock = reactor
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        if endpoint_factory is None:
            def endpoint_factory(host, port):
                return default_endpoint(reactor, host, port, connect_timeout)
        self._endpoint_factory = endpoint_factory
        self._lock = DeferredLock()
        self._proto = None
        self._preferred = None
        self._closed = False
        self._reconnecting = False
        self._sleeps = set()
        self._rid_prefix = uuid4().hex[:12]
        self._rids = itertools.count(1)
        self._seen = OrderedDict()
        self._seen_limit = seen_limit
        self.on_message = None
        self.on_event = None
        self.on_status = None
        self.username = None
        self.token = None
        self.address = None
        self.last_hello = None

    # -- operations -------------------------------------------------------

    def connect(self):
        """
        Connect to the leader (or, during an election, any server).

        @return: a L{Deferred} firing with the connected server's C{hello}.
        """
        return Deferred.fromCoroutine(self._retrying(None, None, resume=True))

    def request(self, op, **args):
        """
        Perform any operation.  A mutating one gets a fresh C{rid} unless
        C{args} has one; every retry of it reuses that C{rid}.
        """
        return Deferred.fromCoroutine(self._request(op, args))

    def hello(self):
        """C{hello}: C{node}, C{role}, C{epoch}, C{leader} of the connected server."""
        return self.request("hello")

    def cluster(self):
        """C{cluster}: C{leader}, C{epoch}, C{nodes} as the connected server sees them."""
        return self.request("cluster")

    def create_account(self, username, password):
        """C{create_account}: C{username}."""
        return self.request("create_account", username=username, password=password)

    def login(self, username, password):
        """C{login}: C{token}, C{unread}; the session is kept and resumed after failovers."""
        return self.request("login", username=username, password=password)

    def resume(self, token):
        """C{resume} a session by its token: C{username}, C{unread}."""
        return self.request("resume", token=token)

    def logout(self):
        """
        C{logout}: C{{}}; the session is forgotten.  A session that has
        already ended (for instance by this logout's first attempt, before a
        failover lost its answer) counts as logged out.
        """
        return Deferred.fromCoroutine(self._logout())

    async def _logout(self):
        had_session = self.token is not None
        try:
            return await self._request("logout", {})
        except ChatError as e:
            if e.code != NOT_LOGGED_IN or not had_session:
                raise
            self._forget_session()
            return {}

    def list_accounts(self, pattern="*", offset=0, limit=50):
        """C{list_accounts} matching a glob: C{accounts} (names), C{total}."""
        return self.request("list_accounts", pattern=pattern, offset=offset, limit=limit)

    def send(self, to, text):
        """C{send}: C{message} (C{id}, C{from}, C{to}, C{text}, C{sent_at})."""
        return self.request("send", to=to, text=text)

    def read(self, limit=10):
        """C{read} unread messages: C{messages} (oldest first), C{remaining}."""
        return self.request("read", limit=limit)

    def history(self, with_=None, before=None, limit=None):
        """C{history}: C{messages}, newest first; L{None} arguments are left out."""
        args = {"with": with_, "before": before, "limit": limit}
        return self.request("history", **{k: v for k, v in args.items() if v is not None})

    def delete_messages(self, ids):
        """C{delete_messages} by id: C{deleted} (a count)."""
        return self.request("delete_messages", ids=list(ids))

    def delete_account(self, password):
        """C{delete_account} of the logged-in user: C{{}}."""
        return self.request("delete_account", password=password)

    def close(self):
        """
        Drop the connection and stop retrying (a logged-in client otherwise
        keeps reconnecting in the background); the session stays resumable.

        @return: a L{Deferred} firing once the connection is closed.
        """
        self._closed = True
        for sleep in list(self._sleeps):
            sleep.cancel()
        proto, self._proto = self._proto, None
        if proto is None:
            return succeed(None)
        lost = proto.when_lost()
        proto.transport.loseConnection()
        return lost

    # -- retry machinery --------------------------------------------------

    async def _request(self, op, args):
        if op in MUTATING_OPS and "rid" not in args:
            args["rid"] = "{}-{}".format(self._rid_prefix, next(self._rids))
        # login and resume establish the session themselves; resuming an
        # old one first would be wasted (or fail, if it was for another user).
        return await self._retrying(op, args, resume=op not in ("login", "resume"))

    def _remember(self, op, args, result, proto):
        """
        Keep the session and seen-message state an answer implies.

        @param proto: the connection the answer came on: the one now logged
            in with the answer's session (another connection the client may
            have moved to meanwhile is not, and resumes before its next
            request).
        """
        if op in ("login", "resume"):
            # A login retried after a lost connection was sent again and got
            # a new session: its token, the latest answer's, is the one kept.
            self.token = result.get("token", args.get("token"))
            self.username = result.get("username", args.get("username"))
            proto.session_token = self.token
        elif op in ("logout", "delete_account"):
            self._forget_session()
            proto.session_token = None
        elif op == "read":
            for message in result.get("messages", ()):
                if isinstance(message, dict):
                    self._mark_seen(message.get("id"))

    async def _retrying(self, op, args, resume):
        """
        Run C{op} (or only connect, if it is L{None}) until it gets an answer
        other than C{not_leader}/C{unavailable}, or the deadline passes.
        """
        deadline = self._clock.seconds() + self.timeout
        delay = BACKOFF_INITIAL
        may_hurry = True
        while True:
            if self._closed:
                raise ChatError(CLOSED, "the client is closed")
            connected, proto = False, None
            try:
                proto = await self._ensure_connected(resume)
                if op is None:
                    return self.last_hello
                connected = True
                result = await self._call(proto, op, args, self.answer_timeout)
                self._remember(op, args, result, proto)
                return result
            except ChatError as e:
                if e.code not in (NOT_LEADER, UNAVAILABLE):
                    raise
                error = e
                # Going to a newly named leader needs no pause.
                hurry = e.code == NOT_LEADER and self._follow(e.leader, proto or self._proto)
            except CONNECTION_ERRORS as e:
                error = e
                # A connection lost mid-request is retried at once (usually
                # on another server); failing to connect at all waits.
                hurry = connected
            if self._closed:
                raise ChatError(CLOSED, "the client is closed")
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                if isinstance(error, ChatError):
                    raise error
                raise ServerUnreachable(
                    "no server answered within {} s (last error: {})".format(self.timeout, error)
                ) from error
            # Hurry at most once in a row, so a server that drops every
            # connection at once cannot make this loop spin.
            if hurry and may_hurry:
                may_hurry = False
                continue
            may_hurry = True
            await self._sleep(min(delay, remaining))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _sleep(self, seconds):
        sleep = deferLater(self._clock, seconds)
        self._sleeps.add(sleep)
        try:
            await sleep
        except CancelledError:
            raise ChatError(CLOSED, "the client is closed") from None
        finally:
            self._sleeps.discard(sleep)

    async def _call(self, proto, op, args, timeout):
        answer = proto.call(op, args)
        answer.addTimeout(timeout, self._clock)
        try:
            return await answer
        except DeferredTimeoutError:
            # A server that accepted the connection but does not answer
            # (stopped, partitioned) is as good as gone; aborting makes every
            # request waiting on it move on too.
            proto.transport.abortConnection()
            raise

    def _follow(self, leader, answered):
        """
        Prefer the leader a C{not_leader} answer named.

        @param answered: the connection the answer came on.
        @return: whether to retry at once: the client now goes to another
            server, or another request already moved it.
        """
        address = leader_address(leader)
        if address is None:
            return False
        self._preferred = address
        if self._proto is not answered:
            return True
        if address == self.address:
            return False
        proto, self._proto, self.address = self._proto, None, None
        if proto is not None:
            proto.transport.loseConnection()
        return True

    async def _ensure_connected(self, resume):
        """
        Return a connection to the leader, opening it and resuming the
        session first if needed.  The lock makes concurrent requests share
        one reconnection.
        """
        async with self._lock:
            proto = self._proto
            if proto is None or proto.lost:
                proto = await self._connect_leader()
            if resume and self.token is not None and proto.session_token != self.token:
                await self._resume_session(proto)
            return proto

    async def _resume_session(self, proto):
        token = self.token
        try:
            result = await self._call(proto, "resume", {"token": token}, self.answer_timeout)
        except ChatError as e:
            if e.code in (NOT_LEADER, UNAVAILABLE):
                raise
            # The cluster no longer knows the session (expired, account
            # deleted): go on without it, so the caller's request gets the
            # honest not_logged_in answer.
            self.log.warn("could not resume the session: {error}", error=e)
            self._forget_session()
            self._status("session ended ({}); log in again".format(e.code))
            return
        proto.session_token = token
        self.username = result.get("username", self.username)

    def _forget_session(self):
        self.token = self.username = None
        if self._proto is not None:
            self._proto.session_token = None

    def _candidates(self):
        first = [self._preferred] if self._preferred is not None else []
        return list(OrderedDict.fromkeys(first + self._addresses))

    async def _connect_leader(self):
        error = ConnectError(string="no address to try")
        for address in self._candidates():
            try:
                proto, hello = await self._open(address)
            except CONNECTION_ERRORS as e:
                self.log.info(
                    "cannot use {host}:{port}: {error}", host=address[0], port=address[1], error=e
                )
                error = e
                continue
            leader = leader_address(hello.get("leader"))
            if hello.get("role") != "leader" and leader is not None and leader != address:
                try:
                    leader_proto, leader_hello = await self._open(leader)
                except CONNECTION_ERRORS as e:
                    # Stay: requests will get not_leader and try again.
                    self.log.info(
                        "cannot reach leader {host}:{port}: {error}",
                        host=leader[0], port=leader[1], error=e,
                    )
                else:
                    proto.transport.loseConnection()
                    proto, hello, address = leader_proto, leader_hello, leader
            self._proto, self.address, self.last_hello = proto, address, hello
            self._status("connected to {}:{} ({})".format(*address, hello.get("role")))
            return proto
        raise error

    async def _open(self, address):
        proto = ClientLineProtocol(on_event=self._on_event, on_lost=self._on_lost)
        await connectProtocol(self._endpoint_factory(*address), proto)
        try:
            hello = await self._call(proto, "hello", {}, self.connect_timeout)
        except ChatError as e:
            proto.transport.loseConnection()
            raise ConnectError(string="hello refused: {}".format(e)) from e
        return proto, hello

    def _on_lost(self, proto, reason):
        if proto is not self._proto:
            return
        self._proto = self.address = None
        if self._closed:
            return
        self.log.info("connection lost: {reason}", reason=reason.value)
        # Pushes only arrive on a live, resumed connection: a logged-in
        # client reconnects now rather than at its next request.
        if self.token is not None and not self._reconnecting:
            self._status("connection lost; reconnecting")
            self._reconnecting = True
            Deferred.fromCoroutine(self._keep_connected())

    async def _keep_connected(self):
        """
        Reconnect and resume, for as long as it takes (until L{close} or
        the session ends), reporting each deadline that passes.
        """
        try:
            while not self._closed and self.token is not None:
                try:
                    await self._retrying(None, None, resume=True)
                    return
                except ChatError as e:
                    if e.code == CLOSED:
                        return
                    self.log.warn("still reconnecting: {error}", error=e)
                    self._status("still reconnecting ({})".format(e))
        except Exception:
            self.log.failure("reconnecting failed")
        finally:
            self._reconnecting = False

    def _status(self, text):
        if self.on_status is not None:
            try:
                self.on_status(text)
            except Exception:
                self.log.failure("status callback failed")

    # -- pushed events ----------------------------------------------------

    def _mark_seen(self, message_id):
        """
        Remember a message id.

        @return: whether it was new.
        """
        try:
            if message_id is None or message_id in self._seen:
                return message_id is None
            self._seen[message_id] = None
        except TypeError:
            return True
        while len(self._seen) > self._seen_limit:
            self._seen.popitem(last=False)
        return True

    def _on_event(self, event):
        kind = event.get("event")
        if kind == "message":
            message = event.get("message")
            if not isinstance(message, dict):
                self.log.warn("ignoring a malformed message event: {event!r}", event=event)
            elif self._mark_seen(message.get("id")) and self.on_message is not None:
                self.on_message(message)
            return
        if kind == "leader_changed":
            address = leader_address(event.get("leader"))
            if address is not None:
                self._preferred = address
        if self.on_event is not None:
            self.on_event(event)


