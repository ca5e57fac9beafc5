# -*- test-case-name: tests.test_peer,tests.test_hostile -*-
"""
One AMP connection between replichat servers, or between a server and an
admin tool: L{PeerProtocol}, which parses and dispatches.

What it lets through depends on the handshake (L{replichat.peerauth}):
before authentication only the next handshake step, in a small box; after
it, message commands become L{replichat.peermessages} values handed to the
owner (a L{replichat.peernetwork.PeerNetwork}), and the admin commands are
answered (L{replichat.peeradmin}).  Id 0 is an admin tool, which may only
use the latter.
"""

from __future__ import annotations

from functools import partial

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.protocols import amp

from replichat.peeradmin import _ADMIN_NAMES, _AdminResponders
from replichat.peerauth import (
    _AUTHENTICATED,
    _CHALLENGED,
    _NEW,
    _REFUSED,
    HANDSHAKE_TIMEOUT,
    AuthenticationFailed,
    _Handshake,
)
from replichat.peercommands import COMMAND_FOR_NAME, Hello, Prove, from_command

#: Largest box accepted before authentication (a handshake box is ~100
#: bytes), so a stranger cannot make a server buffer a huge box.
MAX_BOX_BEFORE_AUTH = 4096

#: Largest box accepted from an authenticated peer.
MAX_BOX = 64 * 1024 * 1024


def _describe(address):
    """
    C{host:port} of an L{IAddress}, or its repr.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else repr(address)


class PeerProtocol(_Handshake, _AdminResponders, amp.AMP):
    """
    One authenticated AMP connection between two servers, or between a
    server and an admin tool (id 0).

    The C{owner} (a L{PeerNetwork}, or L{None} for an admin tool) is told
    C{connection_authenticated(protocol)}, C{message_received(protocol,
    message)} and, for every connection, authenticated or not,
    C{connection_lost(protocol)}; its C{node} answers the admin commands.

    @ivar dialer: this side made the connection.
    @ivar peer_id: the other side's id, once authenticated; else L{None}.
    """

    log = Logger()

    def __init__(
        self, node_id, key, clock, owner=None, dialer=False, expected_peer=None
    ):
        """
        @param node_id: this side's id (0 for an admin tool).
        @param key: the shared secret.
        @param clock: an L{IReactorTime} for the handshake deadline.
        @param expected_peer: for a dialer, the id it means to reach; a
            different answer is refused.
        """
        super().__init__()
        self.node_id = node_id
        self.dialer = dialer
        self.expected_peer = expected_peer
        self.peer_id = None
        self._key = key
        self._clock = clock
        self._owner = owner
        self._state = _NEW
        self._claimed = None
        self._dial_nonce = self._accept_nonce = b""
        self._box_bytes = 0
        self._timer = None
        self._authenticated_waiters = []
        self._closed_waiters = []
        self._closed = False
        self.address = "?"

    # Connection life

    def connectionMade(self):
        self.address = _describe(self.transport.getPeer())
        # Replication is latency bound: never let Nagle hold a small box.
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            try:
                getattr(self.transport, option)(True)
            except Exception:
                pass  # not TCP (a test transport, TLS over something else)
        self._timer = self._clock.callLater(
            HANDSHAKE_TIMEOUT,
            self._refuse,
            f"did not authenticate within {HANDSHAKE_TIMEOUT} seconds",
        )
        super().connectionMade()
        if self.dialer:
            Deferred.fromCoroutine(self._dial()).addErrback(self._dial_failed)

    def connectionLost(self, reason):
        self._cancel_timer()
        self._closed = True
        if self._state in (_NEW, _CHALLENGED):
            self.log.debug(
                "connection with {address} closed before authenticating",
                address=self.address,
            )
        super().connectionLost(reason)
        self._fail_waiters(AuthenticationFailed("the connection was closed"))
        if self._owner is not None:
            self._owner.connection_lost(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def when_authenticated(self):
        """
        @return: a L{Deferred} firing with the peer's id once both sides are
            authenticated (for a dialer: once the acceptor's proof checked
            out and ours is sent), or failing with L{AuthenticationFailed}.
        """
        if self._state == _AUTHENTICATED:
            return succeed(self.peer_id)
        if self._state == _REFUSED or self._closed:
            return fail(AuthenticationFailed("the connection was refused or closed"))
        d = Deferred()
        self._authenticated_waiters.append(d)
        return d

    def when_closed(self):
        """
        @return: a L{Deferred} firing once the connection is closed.
        """
        d = Deferred()
        if self._closed:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def close(self):
        """
        Close the connection (flushing what was sent).
        """
        if self.transport is not None:
            self.transport.loseConnection()

    # Gatekeeping: what is parsed, and what runs

    def stringReceived(self, string):
        # Every key and value of a box passes here: count them, so no box
        # can grow without bound, and stop parsing a refused connection.
        if self._state == _REFUSED or self._closed:
            return
        self._box_bytes += len(string) + 2
        limit = MAX_BOX if self._state == _AUTHENTICATED else MAX_BOX_BEFORE_AUTH
        if self._box_bytes > limit:
            self._refuse(f"box larger than {limit} bytes")
            return
        super().stringReceived(string)

    def ampBoxReceived(self, box):
        self._box_bytes = 0
        if self._state == _AUTHENTICATED:
            super().ampBoxReceived(box)
        elif not self._expected_now(box):
            what = box.get(amp.COMMAND, b"an answer").decode("ascii", "replace")
            self._refuse(f"sent {what} before authenticating")
        elif (problem := self._malformed(box)) is not None:
            self._refuse(problem)
        else:
            super().ampBoxReceived(box)

    def _malformed(self, box):
        """
        Why a handshake box cannot be parsed, or None: AMP would raise out
        of dataReceived, or log a traceback, for a stranger's bad box.
        """
        if self.dialer:
            if amp.ANSWER not in box:
                missing = {amp.ERROR_CODE, amp.ERROR_DESCRIPTION} - set(box)
                if missing:
                    return "malformed error answer to Hello (no %s)" % (
                        ", ".join(sorted(k.decode() for k in missing)),
                    )
                return None
            what, parse = "answer to Hello", Hello.parseResponse
        else:
            command = Hello if self._state == _NEW else Prove
            what, parse = command.commandName.decode(), command.parseArguments
        try:
            parse(box, self)  # parses a copy
        except Exception as e:
            return f"malformed {what}: {e!r}"
        return None

    def _expected_now(self, box):
        """
        Whether C{box} is the next handshake step from an unauthenticated
        peer.
        """
        if self._state == _REFUSED:
            return False
        if self.dialer:
            tag = box.get(amp.ANSWER, box.get(amp.ERROR))
            return tag is not None and tag in self._outstandingRequests
        command = box.get(amp.COMMAND)
        if self._state == _NEW:
            return command == Hello.commandName and amp.ASK in box
        return self._state == _CHALLENGED and command == Prove.commandName

    def locateResponder(self, name):
        # Reached only for boxes ampBoxReceived let through.
        if self._state != _AUTHENTICATED:
            return super().locateResponder(name)
        command = COMMAND_FOR_NAME.get(name)
        if command is not None:
            return partial(self._receive_message, command)
        if name in _ADMIN_NAMES:
            return super().locateResponder(name)
        # Unknown here (a newer peer, or AMP's own StartTLS): say so rather
        # than let AMP log a failure and drop a good connection.
        return partial(self._unknown_command, name)

    def _receive_message(self, command, box):
        if self.peer_id == 0:
            self.log.warn(
                "admin tool at {address} sent {command}; ignored",
                address=self.address,
                command=command.commandName.decode("ascii"),
            )
        else:
            try:
                message = from_command(command, command.parseArguments(box, self))
            except Exception as e:
                self.log.warn(
                    "dropped an undecodable {command} from node {peer}: {error}",
                    command=command.commandName.decode("ascii"),
                    peer=self.peer_id,
                    error=repr(e),
                )
            else:
                if self._owner is not None:
                    self._owner.message_received(self, message)
        return amp.AmpBox()

    def _unknown_command(self, name, box):
        self.log.warn(
            "node {peer} sent unknown command {command}; ignored",
            peer=self.peer_id,
            command=name.decode("ascii", "replace"),
        )
        if amp.ASK in box:
            raise amp.RemoteAmpError(
                amp.UNHANDLED_ERROR_CODE, f"Unhandled Command: {name!r}"
            )
        return amp.AmpBox()
