# -*- test-case-name: tests.test_peer,tests.test_hostile -*-
"""
Who may talk on a peer connection: the cluster's shared secret
(L{load_key}) and the handshake that proves it (L{_Handshake}).

A connection authenticates before anything else: until both sides have
proved they hold the shared secret, every box other than the next handshake
step closes the connection, and no responder runs (the gate is
L{replichat.peerconnection.PeerProtocol.ampBoxReceived}).  The handshake is
a mutual HMAC-SHA256 challenge over two fresh nonces, with the role
(C{b"accept"}, C{b"dial"}) and the prover's id in the MAC so that a proof
can neither be reflected back nor claimed for another id::

    dialer -> Hello(node=D, nonce=n1)
    dialer <- node=A, nonce=n2, proof=HMAC(key, b"accept" + n1 + n2 + b"A")
              (the dialer checks it, or closes)
    dialer -> Prove(proof=HMAC(key, b"dial" + n1 + n2 + b"D"))
              (the acceptor checks it, or closes)

Peers authenticate each other, but boxes are not MAC'd one by one: against
an attacker who can alter traffic on the wire, give C{tls} as well.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from twisted.internet import error
from twisted.protocols import amp

from replichat.config import ConfigError
from replichat.peercommands import Hello, Prove, Refused

#: Length of each side's challenge.
NONCE_BYTES = 32

#: Seconds a connection may take to authenticate before it is closed.
HANDSHAKE_TIMEOUT = 5.0

#: Seconds a dialer keeps a connection it refused open (ignoring it) before
#: closing it.  L{ClientService} retries a connection that was made quickly,
#: so without this a wrong secret would reconnect and fail many times a
#: second.
DIALER_REFUSED_HOLD = 1.0

#: The key used when the configuration names no secret file.  It is
#: public, so it authenticates nothing; L{key_is_default} tells the caller
#: to say so.
DEFAULT_KEY = hashlib.sha256(b"replichat: default peer key, not a secret").digest()


class AuthenticationFailed(Exception):
    """
    A connection was refused during the handshake; the message says why.
    """


def load_key(config):
    """
    The shared secret peers authenticate with: the content of
    C{config.secret_file} without trailing whitespace, or L{DEFAULT_KEY}
    when the configuration names no file (check L{key_is_default} and warn).

    @raise ConfigError: naming the file, if it cannot be read or is empty.
    @rtype: L{bytes}
    """
    path = config.secret_file
    if path is None:
        return DEFAULT_KEY
    try:
        with open(path, "rb") as f:
            key = f.read().rstrip()
    except OSError as e:
        raise ConfigError([("secret_file", f"cannot read {path}: {e.strerror}")])
    if not key:
        raise ConfigError([("secret_file", f"{path} is empty")])
    return key


def key_is_default(key):
    """
    Whether C{key} is the public L{DEFAULT_KEY}, which authenticates no one.
    """
    return hmac.compare_digest(key, DEFAULT_KEY)


def _proof(key, role, dial_nonce, accept_nonce, node_id):
    """
    The handshake MAC of C{node_id} acting as C{role}; the nonces have a
    fixed length, so the concatenation is unambiguous.
    """
    message = role + dial_nonce + accept_nonce + b"%d" % (node_id,)
    return hmac.new(key, message, hashlib.sha256).digest()


# Handshake states of a PeerProtocol.
_NEW = "new"
_CHALLENGED = "challenged"  # acceptor: Hello answered, waiting for Prove
_AUTHENTICATED = "authenticated"
_REFUSED = "refused"


class _Handshake(amp.CommandLocator):
    """
    The handshake of L{replichat.peerconnection.PeerProtocol}: the dialer's
    side (L{_dial}), the acceptor's responders to L{Hello} and L{Prove}, and
    how a connection ends up authenticated (L{_authenticate}) or refused
    (L{_refuse}).

    Keeps C{_state} (one of the states above), C{_claimed}, the two nonces
    and the handshake C{_timer}, sets C{peer_id} and fires
    C{_authenticated_waiters}; reads C{_key}, C{_clock}, C{_owner},
    C{_closed}, C{node_id}, C{dialer}, C{expected_peer}, C{address} and
    C{log}, all set up by L{replichat.peerconnection.PeerProtocol}.

    A L{amp.CommandLocator} so that its C{@Hello.responder} and
    C{@Prove.responder} are collected here: AMP's metaclass hands every
    responder to the next locator class defined.
    """

    async def _dial(self):
        dial_nonce = os.urandom(NONCE_BYTES)
        answer = await self.callRemote(Hello, node=self.node_id, nonce=dial_nonce)
        peer, accept_nonce = answer["node"], answer["nonce"]
        expected = _proof(self._key, b"accept", dial_nonce, accept_nonce, peer)
        if not hmac.compare_digest(expected, answer["proof"]):
            self._refuse(f"node {peer} gave a wrong proof (not our secret?)", peer)
        elif len(accept_nonce) != NONCE_BYTES or peer <= 0 or peer == self.node_id:
            self._refuse(f"bad handshake answer (node {peer})", peer)
        elif self.expected_peer is not None and peer != self.expected_peer:
            self._refuse(f"it is node {peer}, not node {self.expected_peer}", peer)
        else:
            proof = _proof(self._key, b"dial", dial_nonce, accept_nonce, self.node_id)
            self.callRemote(Prove, proof=proof)
            self._authenticate(peer)

    def _dial_failed(self, failure):
        if failure.check(error.ConnectionClosed):
            return  # connectionLost tells whoever waits
        if failure.check(Refused, amp.RemoteAmpError):
            self._refuse(f"the peer refused the handshake: {failure.value}")
        else:
            self.log.failure("handshake with {address}", failure, address=self.address)
            self._refuse("handshake failed")

    @Hello.responder
    def _hello(self, node, nonce):
        if len(nonce) != NONCE_BYTES or node < 0 or node == self.node_id:
            reason = f"malformed Hello (node {node}, {len(nonce)}-byte nonce)"
            # Close once the error answer is out, so the dialer learns why.
            self._refuse(reason, node, close_after=0)
            raise Refused(reason)
        self._claimed = node
        self._dial_nonce = nonce
        self._accept_nonce = os.urandom(NONCE_BYTES)
        self._state = _CHALLENGED
        proof = _proof(self._key, b"accept", nonce, self._accept_nonce, self.node_id)
        return {"node": self.node_id, "nonce": self._accept_nonce, "proof": proof}

    @Prove.responder
    def _prove(self, proof):
        expected = _proof(
            self._key, b"dial", self._dial_nonce, self._accept_nonce, self._claimed
        )
        if hmac.compare_digest(expected, proof):
            self._authenticate(self._claimed)
        else:
            self._refuse("wrong proof (not our secret?)", self._claimed)
        return {}

    def _authenticate(self, peer):
        self._cancel_timer()
        self._state = _AUTHENTICATED
        self.peer_id = peer
        self.log.info(
            "{side} connection with node {peer} at {address} authenticated",
            side="dialed" if self.dialer else "accepted",
            peer=peer,
            address=self.address,
        )
        waiters, self._authenticated_waiters = self._authenticated_waiters, []
        for d in waiters:
            d.callback(peer)
        if self._owner is not None:
            self._owner.connection_authenticated(self)

    def _refuse(self, reason, claimed=None, close_after=None):
        """
        Refuse the connection: ignore everything it sends from now on and
        close it, after C{close_after} seconds if given (a network's dialer
        waits L{DIALER_REFUSED_HOLD}).
        """
        if self._state == _REFUSED or self._closed:
            return
        self._state = _REFUSED
        self._cancel_timer()
        self.log.warn(
            "refused {side} connection with {address} (claiming node {claimed}):"
            " {reason}",
            side="dialed" if self.dialer else "accepted",
            address=self.address,
            claimed=claimed if claimed is not None else self._claimed,
            reason=reason,
        )
        self._fail_waiters(AuthenticationFailed(reason))
        if close_after is None and self.dialer and self.peer_id is None:
            if self._owner is not None:  # a network's dial, which retries
                close_after = DIALER_REFUSED_HOLD
        if close_after is None:
            self.close()
        else:
            self._timer = self._clock.callLater(close_after, self.close)

    def _fail_waiters(self, exception):
        waiters, self._authenticated_waiters = self._authenticated_waiters, []
        for d in waiters:
            d.errback(exception)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
