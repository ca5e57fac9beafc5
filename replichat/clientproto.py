# -*- test-case-name: tests.test_client -*-
"""
One client connection speaking the line protocol of DESIGN.md §4.

L{ClientLineProtocol} numbers requests, matches answers to them by C{id}
(answers may come in any order) and hands pushed events to a callback.  It
knows nothing of leaders or retries: L{replichat.client.ChatClient} builds
those on top.  L{query_node} asks one server one question, for tools that
report on a particular server.
"""

import itertools
import json

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from replichat.errors import TOO_LARGE

__all__ = [
    "MAX_ANSWER",
    "MAX_LINE",
    "ChatError",
    "ClientLineProtocol",
    "encode_line",
    "default_endpoint",
    "leader_address",
    "query_node",
]

#: Longest request line, in bytes: the protocol's limit (DESIGN.md §4).
MAX_LINE = 65536

#: Longest answer line accepted from a server, in bytes.  Answers are not
#: bound by the request limit: a page of C{read} or C{history} holds up to
#: 1000 messages of up to C{max_text_chars} (10,000 by default) characters,
#: tens of megabytes at worst.
MAX_ANSWER = 64 * 1024 * 1024


class ChatError(Exception):
    """
    A request the cluster refused or that could not be completed.

    @ivar code: the protocol's error code (C{bad_credentials}, ...) or, for
        failures found by the client itself, C{unreachable} or C{closed}.
    @ivar message: a sentence for a human.
    @ivar leader: for C{not_leader}, the leader's C{{"id", "host", "port"}}
        if the server knows it, else L{None}.
    """

    def __init__(self, code, message, leader=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.leader = leader

    def __str__(self):
        return "{}: {}".format(self.code, self.message)


def encode_line(obj):
    """
    Encode one protocol object as a line (without the delimiter).

    @param obj: a JSON-serialisable dict.
    @return: compact UTF-8 JSON bytes; JSON escapes newlines inside strings,
        so the result never contains the delimiter.
    """
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def leader_address(leader):
    """
    The C{(host, port)} of a C{leader} object, or L{None} if it names none.
    """
    if isinstance(leader, dict):
        host, port = leader.get("host"), leader.get("port")
        if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool):
            return (host, port)
    return None


class ClientLineProtocol(LineOnlyReceiver):
    """
    One client connection: JSON requests out, answers and events in.

    @ivar on_event: called with each event object (a dict with C{event} and
        no C{id}).
    @ivar on_lost: called with this protocol and the reason when the
        connection ends, after the pending requests have failed.
    @ivar session_token: the session this connection is logged in with, kept
        here by L{replichat.client.ChatClient} so it knows when a new connection needs a
        C{resume}.
    """

    delimiter = b"\n"
    #: Longest line accepted from the server.
    MAX_LENGTH = MAX_ANSWER
    #: Longest request line sent.
    max_request_bytes = MAX_LINE
    log = Logger()

    def __init__(self, on_event=None, on_lost=None):
        self.on_event = on_event
        self.on_lost = on_lost
        self.session_token = None
        self.lost = False
        self._ids = itertools.count(1)
        self._pending = {}
        self._lost_waiters = []
        self._pieces = []  # the start of a line not complete yet
        self._piece_bytes = 0

    def call(self, op, args=None):
        """
        Send one request.

        @param op: the operation name.
        @param args: the request's other fields.
        @return: a L{Deferred} that fires with the C{result} dict, or fails
            with L{ChatError} for an error answer and L{ConnectionLost} if the
            connection ends first.  Cancelling it forgets the request.
        """
        request_id = next(self._ids)
        line = encode_line({**(args or {}), "id": request_id, "op": op})
        if len(line) > self.max_request_bytes:
            message = "request is larger than {} bytes".format(self.max_request_bytes)
            return fail(ChatError(TOO_LARGE, message))
        if self.lost or self.transport is None:
            return fail(ConnectionLost("not connected"))
        answer = Deferred(lambda _: self._pending.pop(request_id, None))
        self._pending[request_id] = answer
        self.sendLine(line)
        return answer

    def when_lost(self):
        """
        @return: a L{Deferred} that fires with L{None} once the connection
            has ended.
        """
        if self.lost:
            return succeed(None)
        waiter = Deferred()
        self._lost_waiters.append(waiter)
        return waiter

    def dataReceived(self, data):
        """
        Split the server's lines.  Unlike L{LineOnlyReceiver}, which joins
        what it has buffered to each new packet, a long answer is kept as a
        list of packets and joined once, when its end arrives: a page of
        megabytes arrives in linear time.
        """
        lines = data.split(self.delimiter)
        if len(lines) == 1:
            self._pieces.append(data)
            self._piece_bytes += len(data)
            if self._piece_bytes > self.MAX_LENGTH:
                self._pieces, self._piece_bytes = [], 0
                self.lineLengthExceeded(b"")
            return
        if self._pieces:
            self._pieces.append(lines[0])
            lines[0] = b"".join(self._pieces)
        rest = lines.pop()
        self._pieces, self._piece_bytes = ([rest], len(rest)) if rest else ([], 0)
        if len(rest) > self.MAX_LENGTH:
            lines.append(rest)  # overlong too: said so in its turn
        for line in lines:
            if self.transport is None or self.transport.disconnecting:
                return
            if len(line) > self.MAX_LENGTH:
                self._pieces, self._piece_bytes = [], 0
                return self.lineLengthExceeded(line)
            self.lineReceived(line)

    def lineReceived(self, line):
        """
        Dispatch one line from the server: an answer or an event.

        A malformed line is logged and dropped: the answers that do arrive
        are still good, and the request it may have meant times out.
        """
        try:
            message = json.loads(line.decode("utf-8"))
        except ValueError:
            self.log.warn("ignoring a server line that is not JSON: {line!r}", line=line[:200])
            return
        if not isinstance(message, dict):
            self.log.warn("ignoring a server line that is not an object: {line!r}", line=line[:200])
            return
        request_id = message.get("id")
        if request_id is None:
            if "event" in message:
                self._dispatch_event(message)
            else:
                # An error answer without an id means the server could not
                # parse one of our lines; there is no request to give it to.
                self.log.warn("server answered without an id: {answer!r}", answer=message)
            return
        try:
            answer = self._pending.pop(request_id, None)
        except TypeError:
            answer = None
        if answer is None:
            self.log.warn("ignoring an answer to unknown request {id!r}", id=request_id)
            return
        if message.get("ok") is True:
            result = message.get("result")
            answer.callback(result if isinstance(result, dict) else {})
        else:
            answer.errback(self._error_from(message.get("error")))

    @staticmethod
    def _error_from(error):
        """
        Turn the C{error} object of an answer into a L{ChatError}.
        """
        if not isinstance(error, dict):
            return ChatError("internal", "malformed error answer: {!r}".format(error))
        leader = error.get("leader")
        return ChatError(
            str(error.get("code", "internal")),
            str(error.get("message", "")),
            leader if isinstance(leader, dict) else None,
        )

    def _dispatch_event(self, event):
        """
        Hand an event to L{on_event}; a bug there must not break the
        connection.
        """
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            self.log.failure("event callback failed for {event!r}", event=event)

    def lineLengthExceeded(self, line):
        """
        A line over L{MAX_LENGTH}: the stream cannot be resynchronised
        reliably, so drop the connection (the client reconnects).
        """
        self.log.warn("server sent a line over {limit} bytes; disconnecting", limit=self.MAX_LENGTH)
        return self.transport.loseConnection()

    def connectionLost(self, reason):
        """
        Tell L{on_lost}, fail every pending request with L{ConnectionLost},
        then wake anyone waiting in L{when_lost}.
        """
        self.lost = True
        # on_lost first, so the requests failed below retry on a new
        # connection instead of this dead one.
        if self.on_lost is not None:
            self.on_lost(self, reason)
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer.errback(ConnectionLost("lost before the answer ({})".format(reason.value)))
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def default_endpoint(reactor, host, port, timeout):
    """
    The endpoint clients connect with: TCP to a host name or an address,
    giving up after C{timeout} seconds.
    """
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def query_node(reactor, host, port, op, *, timeout=2.0, endpoint_factory=None):
    """
    Ask one server one question, without following any leader: for C{status}
    and the C{hello}/C{cluster} commands, which report on a given server.

    @return: a L{Deferred} firing with the C{result} dict.
    """
    if endpoint_factory is None:
        endpoint = default_endpoint(reactor, host, port, timeout)
    else:
        endpoint = endpoint_factory(host, port)

    async def ask():
        proto = ClientLineProtocol()
        await connectProtocol(endpoint, proto)
        try:
            answer = proto.call(op)
            answer.addTimeout(timeout, reactor)
            return await answer
        finally:
            proto.transport.loseConnection()

    return Deferred.fromCoroutine(ask())
