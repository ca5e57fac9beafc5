# -*- test-case-name: tests.test_sdnotify -*-
"""
Tell systemd about the server's state (C{sd_notify}), without libsystemd.

Under a unit with C{Type=notify}, systemd passes the address of a datagram
socket in C{$NOTIFY_SOCKET} and waits for the service to send C{READY=1}
there before it counts the service as started (and before units ordered
after it start).  Other useful states are C{STOPPING=1} and
C{STATUS=<one line for systemctl status>}.  The protocol: one datagram per
notification, newline-separated C{KEY=VALUE} assignments, to an C{AF_UNIX}
address that is a file-system path or, if it starts with C{@}, a name in
the abstract namespace (the C{@} stands for a leading NUL byte).

Outside systemd C{$NOTIFY_SOCKET} is unset and L{notify} does nothing.
"""

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["notify"]

log = Logger()


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """
    Send C{state} (for example C{"READY=1"}) to the service manager.

    Never raises: a notification that cannot be delivered is logged and
    reported as L{False}, since the server works the same without it.

    @param state: newline-separated C{KEY=VALUE} assignments.
    @param environ: where to look up C{NOTIFY_SOCKET}; the process
        environment unless a test passes its own.

    @return: L{True} if the datagram was sent, L{False} if there is no
        C{NOTIFY_SOCKET} or it could not be sent.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        # Abstract namespace: Python takes a leading NUL byte for it.
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        # systemd also knows vsock: addresses (for virtual machines); a
        # server on a host never gets one.
        log.warn(
            "NOTIFY_SOCKET={address!r} is neither a path nor an abstract"
            " socket; not sending {state!r}",
            address=address,
            state=state,
        )
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8"), target)
    except OSError as e:
        log.warn(
            "could not send {state!r} to NOTIFY_SOCKET={address!r}: {error}",
            state=state,
            address=address,
            error=e,
        )
        return False
    return True
