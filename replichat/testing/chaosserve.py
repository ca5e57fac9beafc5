# -*- test-case-name: tests.test_chaos -*-
"""
The one part of C{bin/chaos} that runs inside each server process:
L{serve_node} runs the real C{twistd replichat} with its outgoing peer
connections rerouted through the driver's fault proxy.

The driver (L{replichat.testing.chaosservers.ChaosCluster.spawn}) passes
what it needs in the environment: the routes (L{ROUTES_ENV}), its own pid
(L{PARENT_ENV}) and the planted bugs to turn on (L{PLANT_ENV}).  This
module imports nothing of the driver, so a server starts with no more than
it needs.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

#: The environment variable naming, for a server process, where its peer
#: connections go: C{{"host:port": [proxy_host, proxy_port]}}.
ROUTES_ENV = "REPLICHAT_CHAOS_ROUTES"
#: The driver's pid, so a server started after the driver died exits.
PARENT_ENV = "REPLICHAT_CHAOS_PARENT"
#: Planted bugs (L{replichat.failpoints}) to turn on in the servers,
#: comma-separated: a run must then find anomalies.
PLANT_ENV = "REPLICHAT_CHAOS_PLANT"


def serve_node(argv: list[str]) -> None:
    """
    Run C{twistd} with C{argv} in this process, with the peer connections
    it makes rerouted as C{$REPLICHAT_CHAOS_ROUTES} says (to the proxy).

    Only where a connection goes changes: the server, its config and its
    log are the real ones.  The hook is L{replichat.peerdial}'s one
    function that makes every peer client endpoint (dials, probes).
    """
    _die_with_parent()
    routes = {key: tuple(value) for key, value in json.loads(os.environ[ROUTES_ENV]).items()}
    from replichat import peerdial

    original = getattr(peerdial, "_client_endpoint", None)
    if original is None:
        raise SystemExit("chaos: replichat.peerdial._client_endpoint is gone; "
                         "serve_node cannot route peer connections")

    def routed(reactor, host, port, *args, **kwargs):
        host, port = routes.get("%s:%d" % (host, port), (host, port))
        return original(reactor, host, port, *args, **kwargs)

    peerdial._client_endpoint = routed
    planted = [name for name in os.environ.get(PLANT_ENV, "").split(",") if name]
    if planted:
        from replichat import failpoints

        failpoints.active.update(planted)
    sys.argv = ["twistd", *argv]
    from twisted.scripts.twistd import run

    run()


def _die_with_parent() -> None:
    """
    Ask Linux to SIGKILL this process when the driver that started it
    exits, however it exits (a driver killed by a test's timeout cannot
    clean up): C{prctl(PR_SET_PDEATHSIG, SIGKILL)}.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the driver's finally is the only cleanup
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        raise SystemExit("chaos: the driver is gone")
