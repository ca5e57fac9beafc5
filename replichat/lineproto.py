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
does not read its answers stops being read from, and is dropped once more
than C{max_output_bytes} wait for it; a connection idle for C{idle_timeout}
seconds is closed.
"""

from __future__ import annotations

import json

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


#: Strict: a client may not send what could not be stored or echoed back.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


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
    if b"\\u" in line:
        # Only a \u escape can smuggle in a surrogate; check those lines.
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

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        if self.limits.idle_timeout:
            self.setTimeout(self.limits.idle_timeout)

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)
        self.handler.connection_lost(self)

    def timeoutConnection(self) -> None:
        self.log.info("closing idle client connection {peer}", peer=self.transport.getPeer())
        self.transport.loseConnection()

    # -- framing ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Split lines like L{LineOnlyReceiver}, except that an overlong line is
        answered and skipped up to its end instead of closing the connection.
        """
        if self._discarding:
            end = data.find(self.delimiter)
            if end < 0:
                return
            data = data[end + 1 :]
            self._discarding = False
        lines = (self._buffer + data).split(self.delimiter)
        self._buffer = lines.pop()
        for line in lines:
            if self.transport.disconnecting:
                return
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
            else:
                self.lineReceived(line)
        if len(self._buffer) > self.MAX_LENGTH:
            self._buffer = b""
            self._discarding = True
            self.lineLengthExceeded(b"")

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
        if self.transport is None or self.transport.disconnecting:
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
                self.transport.abortConnection()
                return
        self.transport.write(line)

    # -- IPushProducer: the transport tells us when the client lags ----------

    def pauseProducing(self) -> None:
        # The client is not reading: stop reading its requests too, so it
        # cannot make us buffer answers without bound.
        self._output_paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._held_bytes = 0
        self.transport.resumeProducing()

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
