# -*- test-case-name: tests.test_peer,tests.test_hostile -*-
"""
The AMP connections between replichat servers, and the names they are
imported by.

Each connection (L{PeerProtocol}) authenticates before anything else, with
a mutual HMAC challenge over the cluster's shared secret; after that it
carries L{replichat.peermessages} values between nodes and answers the
admin commands of an admin tool (id 0).  L{PeerNetwork} keeps one
connection per pair of servers and tells the node when a peer connects, is
lost, or is refused.  L{admin_call} is the CLI's client.

One module per part:

  - L{replichat.peerauth}: the shared secret (L{load_key}) and the
    challenge/proof handshake;
  - L{replichat.peerconnection}: L{PeerProtocol}, one connection: what it
    parses before and after authentication, and where it dispatches;
  - L{replichat.peeradmin}: the server's responders to the admin commands;
  - L{replichat.peernetwork}: L{PeerNetwork}, a server's connections with
    its peers;
  - L{replichat.peerdial}: how the network dials and probes its peers, and
    the one function that makes every outbound endpoint;
  - L{replichat.peeradminclient}: L{admin_call}.

The commands on the wire are in L{replichat.peercommands}.
"""

from __future__ import annotations

from replichat.peeradminclient import AdminCallFailed, admin_call
from replichat.peerauth import (  # noqa: F401 (_proof: tests forge proofs)
    DEFAULT_KEY,
    DIALER_REFUSED_HOLD,
    HANDSHAKE_TIMEOUT,
    NONCE_BYTES,
    _proof,
    key_is_default,
    load_key,
)
from replichat.peerconnection import MAX_BOX_BEFORE_AUTH, PeerProtocol
from replichat.peernetwork import PeerNetwork

__all__ = [
    "DEFAULT_KEY",
    "DIALER_REFUSED_HOLD",
    "HANDSHAKE_TIMEOUT",
    "MAX_BOX_BEFORE_AUTH",
    "NONCE_BYTES",
    "AdminCallFailed",
    "PeerNetwork",
    "PeerProtocol",
    "admin_call",
    "key_is_default",
    "load_key",
]
