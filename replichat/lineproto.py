# -*- test-case-name: tests.test_lineproto -*-
"""
The client line protocol: one JSON object per line, both ways.

Wire format (UTF-8, C{\\n}-terminated, at most C{limits.max_line_bytes} per
line)::

    -> {"id": 1, "op": "login", "username": "alice", "password": "s3cret"}
    <- {"id": 1, "ok": true, "result": {"token": "...", "unread": 2}}
    <- {"id": 2, "ok": false, "error": {"code": "not_leader", "message": "..."}}
    <- {"event": "message", "message": {"id": 17, "from": "bob", ...}}

Answers carry the request's C{id} and may come in any order; events carry no
C{id}.  This module only frames, decodes and encodes: L{parse_request}
validates and L{ChatHandler} acts.

One client must not be able to hurt others, so each connection is bounded:
an overlong line is answered with C{too_large} and skipped (the connection
stays usable); at most C{max_inflight} requests run at once; a client that
does not read its answers stops being read from, and the requests it has
already sent wait unprocessed until it reads again, so one turn of the
reactor does at most about a transport buffer's worth of answers for it
(not a whole packet of pipelined requests); it is dropped once more than
C{max_output_bytes} (answers to requests in flight, pushed messages) wait
for it; a connection that completes no request line for C{idle_timeout}
seconds is closed, however slowly it trickles bytes.  And however cheap
their answers, one connection's requests get at most L{TURN_BUDGET} seconds
of one reactor turn (or one request, if that takes longer): the rest of a
packet of pipelined requests waits for the next turn, after the other
connections had theirs.
"""

from __future__ import annotations

import json
import re
import time

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from replichat import errors
from replichat.errors import ChatError
from replichat.handler import Session
from replichat.jsonwire import COMPACT
from replichat.requests import parse_request


def _reject_constant(name: str) -> object:
    raise ValueError("%s is not JSON" % (name,))


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number %s is out of range" % (text[:32],))
    return value


#: Seconds of one reactor turn that one connection's requests may take
#: before the others get theirs.  Small enough not to be noticed; large
#: enough that a pipelined batch of cheap writes (tens of microseconds
#: each) is still proposed in one turn, and so committed with one fsync.
TURN_BUDGET = 0.01

#: Strict: a client may not send what could not be stored or echoed back.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)

#: A JSON escape of a UTF-16 surrogate, the only way a line can carry one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def encode_line(obj: dict) -> bytes:
    """
    One protocol line for C{obj}: strict JSON (no NaN), valid UTF-8.
    """
    return COMPACT.encode(obj).encode("utf-8") + b"\n"


def decode_line(line: bytes) -> object:
    """
    The JSON value of one request line.

    @raise ChatError: C{bad_request} if the line is not UTF-8, not strict
        JSON (C{NaN}, C{Infinity} and overflowing numbers are refused), too
        deeply nested, or holds a string that is not valid Unicode (a lone
        surrogate written as C{\\ud800}), which could never be stored or
        echoed back.
    """
    try:
        obj = _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ChatError(errors.BAD_REQUEST, "a line must be UTF-8")
    except RecursionError:
        raise ChatError(errors.BAD_REQUEST, "a line must not nest this deeply")
    except ValueError as error:
        raise ChatError(errors.BAD_REQUEST, "a line must be a JSON object: %s" % (error,))
    if _SURROGATE_ESCAPE.search(line):
        # Only a \uD800-\uDFFF escape can smuggle in a surrogate (most
        # clients escape all non-ASCII text, so a plain \u is common).
        try:
            COMPACT.encode(obj).encode("utf-8")
        except UnicodeEncodeError:
            raise ChatError(errors.BAD_REQUEST, "a string holds an unpaired surrogate")
    return obj


@implementer(IPushProducer)
class ClientProtocol(LineOnlyReceiver, TimeoutMixin):
    """
    One client connection.  It registers itself as its transport's producer
    so that it learns when the client stops reading its answers.
    """

    log = Logger()
    delimiter = b"\n"

    #: Measures the work done in a turn (CPU-bound, so not the reactor's
    #: clock, which does not move while a turn runs).
    work_clock = staticmethod(time.perf_counter)

    def __init__(self, handler, limits, clock) -> None:
        self.handler = handler
        self.limits = limits
        self.MAX_LENGTH = limits.max_line_bytes
        self.callLater = clock.callLater
        self.session = Session()
        self.inflight = 0
        self._discarding = False
        self._output_paused = False
        self._held_bytes = 0
        #: Complete lines received but not handled yet, because the client
        #: stopped reading its answers or this turn's budget is spent;
        #: L{None} stands for an overlong line.
        self._held_lines: list[bytes | None] = []
        #: The call that goes on with the held lines next turn, if any.
        self._next_turn = None
        #: Set once the connection is aborted: nothing more is handled or
        #: sent (an aborted TCP transport is not C{disconnecting}).
        self._dropped = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        if self.limits.idle_timeout:
            self.setTimeout(self.limits.idle_timeout)

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)
        if self._next_turn is not None and self._next_turn.active():
            self._next_turn.cancel()
        self._next_turn = None
        self._held_lines = []
        self.handler.connection_lost(self)

    def timeoutConnection(self) -> None:
        self.log.info("closing idle client connection {peer}", peer=self.transport.getPeer())
        if self._output_paused:
            # It does not read: a clean close would wait for it to read the
            # answers still buffered, forever.
            self._drop()
        else:
            self.transport.loseConnection()

    def _drop(self) -> None:
        """
        Abort the connection, dropping what waits for the client; handle and
        send nothing more on it.
        """
        self._dropped = True
        self._held_lines = []
        self.transport.abortConnection()

    # -- framing ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Split lines like L{LineOnlyReceiver}, except that an overlong line is
        answered and skipped up to its end instead of closing the connection,
        and that lines are held, not handled, while the client is not
        reading its answers (see L{pauseProducing}) or once this turn's
        L{TURN_BUDGET} is spent.
        """
        if self._dropped:
            return
        if self._discarding:
            end = data.find(self.delimiter)
            if end < 0:
                return
            data = data[end + 1 :]
            self._discarding = False
        lines: list[bytes | None] = (self._buffer + data).split(self.delimiter)
        self._buffer = lines.pop()
        if len(self._buffer) > self.MAX_LENGTH:
            # Answered in its turn, after the complete lines before it.
            self._buffer = b""
            self._discarding = True
            lines.append(None)
        if self._held_lines:
            self._held_lines.extend(lines)
            if not self._output_paused and self._next_turn is None:
                self._handle_held()
        else:
            self._handle_lines(lines)

    def _handle_lines(self, lines: list[bytes | None]) -> None:
        """
        Handle complete lines in order, until the client stops reading its
        answers or this turn's budget is spent (the rest is held), or the
        connection goes away.
        """
        deadline = self.work_clock() + TURN_BUDGET
        for position, line in enumerate(lines):
            if self._dropped or self.transport.disconnecting:
                return
            if self._output_paused:
                self._held_lines.extend(lines[position:])
                return
            if position and self.work_clock() > deadline:
                self._held_lines.extend(lines[position:])
                # Read nothing more until the held lines are handled.
                self.transport.pauseProducing()
                self._next_turn = self.callLater(0, self._go_on)
                return
            if line is None or len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line or b"")
            else:
                self.lineReceived(line)

    def _handle_held(self) -> None:
        held, self._held_lines = self._held_lines, []
        self._handle_lines(held)

    def _go_on(self) -> None:
        """
        Next turn: go on with the held lines, then read again once all are
        handled (unless the client is not reading its answers).
        """
        self._next_turn = None
        if self._dropped or self.transport.disconnecting or self._output_paused:
            return
        self._handle_held()
        self._resume_reading()

    def _resume_reading(self) -> None:
        if not (self._output_paused or self._dropped or self._next_turn is not None
                or self.transport.disconnecting):
            self.transport.resumeProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer_error(
            None,
            ChatError(
                errors.TOO_LARGE,
                "a line may hold at most %d bytes; this one was skipped" % (self.MAX_LENGTH,),
            ),
        )

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        try:
            obj = decode_line(line)
        except ChatError as error:
            return self._answer_error(None, error)
        request_id = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(request_id, (dict, list)):
            request_id = None
        try:
            request = parse_request(obj, self.limits)
        except ChatError as error:
            return self._answer_error(request_id, error)
        if self.inflight >= self.limits.max_inflight:
            return self._answer_error(
                request_id,
                ChatError(
                    errors.RATE_LIMITED,
                    "at most %d requests may be in flight per connection"
                    % (self.limits.max_inflight,),
                ),
            )
        self.inflight += 1
        try:
            result = self.handler.handle(self, request)
        except Exception:
            return self._answer_failure(Failure(), request_id)
        if isinstance(result, Deferred):
            result.addCallbacks(self._answer_result, self._answer_failure,
                                callbackArgs=(request_id,), errbackArgs=(request_id,))
        else:
            self._answer_result(result, request_id)

    # -- answers and events ----------------------------------------------------

    def _answer_result(self, result: dict, request_id: object) -> None:
        self.inflight -= 1
        self._send({"id": request_id, "ok": True, "result": result})

    def _answer_failure(self, failure, request_id: object) -> None:
        self.inflight -= 1
        if failure.check(ChatError):
            return self._answer_error(request_id, failure.value)
        self.log.failure("request {id!r} failed", failure, id=request_id)
        self._answer_error(request_id, ChatError(errors.INTERNAL, "internal error"))

    def _answer_error(self, request_id: object, error: ChatError) -> None:
        self._send({"id": request_id, "ok": False, "error": error.to_wire()})

    def push_message(self, message: dict) -> None:
        """
        Push a committed message to this (logged-in) client.
        """
        self._send({"event": "message", "message": message})

    def _send(self, obj: dict) -> None:
        if self.transport is None or self.transport.disconnecting or self._dropped:
            return
        try:
            line = encode_line(obj)
        except (ValueError, TypeError):
            self.log.failure("cannot encode an answer: {obj!r}", obj=obj)
            line = encode_line({"id": None, "ok": False, "error": ChatError(
                errors.INTERNAL, "internal error: unencodable answer").to_wire()})
        if self._output_paused:
            self._held_bytes += len(line)
            if self._held_bytes > self.limits.max_output_bytes:
                self.log.warn(
                    "dropping client {peer}: {bytes} bytes wait unread",
                    peer=self.transport.getPeer(),
                    bytes=self._held_bytes,
                )
                self._drop()
                return
        self.transport.write(line)

    # -- IPushProducer: the transport tells us when the client lags ----------

    def pauseProducing(self) -> None:
        # The client is not reading: stop reading its requests, and stop
        # handling those already read, so it cannot make us buffer answers
        # without bound, nor hold the reactor for a whole packet of them.
        self._output_paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._held_bytes = 0
        if self._held_lines and self._next_turn is None:
            self._handle_held()
        self._resume_reading()

    def stopProducing(self) -> None:
        pass


class ClientFactory(Factory):
    """
    Builds a L{ClientProtocol} per connection, all sharing one handler.
    """

    noisy = False
    protocol = ClientProtocol

    def __init__(self, handler, limits, clock) -> None:
        self.handler = handler
        self.limits = limits
        self.clock = clock

    def buildProtocol(self, addr: object) -> ClientProtocol:
        protocol = self.protocol(self.handler, self.limits, self.clock)
        protocol.factory = self
        return protocol
