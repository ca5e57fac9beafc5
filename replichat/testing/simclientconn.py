# -*- test-case-name: tests.test_simulate -*-
"""
A simulated client's connection to one server: L{ClientConnection} carries
JSON requests to the server's real L{replichat.handler.ChatHandler} and
its answers and pushes back, like a TCP connection would, through the
server's L{replichat.testing.simprocess.Process}.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from replichat import errors
from replichat.errors import ChatError
from replichat.handler import Session
from replichat.requests import parse_request

if TYPE_CHECKING:
    from replichat.testing.sim import Simulation
    from replichat.testing.simclients import SimClient


def _wire(obj: object) -> Any:
    """
    What a JSON line carries of C{obj} (tuples become lists, keys strings).
    """
    return json.loads(json.dumps(obj))


_FIN = object()


class ClientConnection:
    """
    One client's TCP connection to one server, as the server's handler sees
    it (C{session}, C{push_message}) and as the client does.

    Each direction is a FIFO with a small delay.  A close by the client is a
    FIN: requests already sent still arrive, then the server forgets the
    connection.  A reset or the server's crash loses what is in flight both
    ways.  The server reads and writes through its
    L{replichat.testing.simprocess.Process}, so a stopped server answers
    nothing until it runs again.
    """

    def __init__(self, sim: Simulation, client: SimClient, node_id: int, serial: int) -> None:
        self.sim = sim
        self.client = client
        self.node_id = node_id
        self.serial = serial
        self.handler = sim.handlers[node_id]
        self.process = sim.cluster.processes[node_id]
        self.session = Session()
        self.client_open = True
        self.server_open = True
        self._up_due = 0.0
        self._down_due = 0.0
        self.ops: dict = {}  # request id -> op, for the nemesis

    def __hash__(self) -> int:
        # The handler keeps connections in sets; hashing by id() would make
        # the order it pushes in differ from run to run.
        return self.serial

    def _due(self, last: float) -> float:
        return max(self.sim.clock.seconds() + self.sim.client_delay(), last)

    # -- client to server ------------------------------------------------------

    def send(self, obj: object) -> None:
        if not self.client_open:
            return
        if isinstance(obj, dict):
            self.ops[obj.get("id")] = obj.get("op")
        self._up_due = due = self._due(self._up_due)
        self.sim.clock.callLater(due - self.sim.clock.seconds(), self._arrive, obj)

    def close(self) -> None:
        """
        The client closes: the server reads what was sent, then the end.
        """
        if self.client_open:
            self.send(_FIN)
            self.client_open = False

    def _arrive(self, obj: object) -> None:
        if self.server_open:
            self.process.receive(partial(self._serve, obj))

    def _serve(self, obj: object) -> None:
        if not self.server_open:
            return
        if obj is _FIN:
            self.server_open = False
            self.handler.connection_lost(self)
            return
        request_id = obj.get("id")
        try:
            request = parse_request(obj, self.handler.limits)
            result = self.handler.handle(self, request)
        except ChatError as error:
            return self._answer_error(request_id, error)
        except Exception as error:
            self.sim.flag("exception", "handler raised %r on %s" % (error, obj))
            return self._answer_error(request_id, ChatError(errors.INTERNAL, "internal error"))
        if isinstance(result, Deferred):
            result.addCallbacks(self._answer_result, self._answer_failure,
                                callbackArgs=(request_id,), errbackArgs=(request_id, obj))
        else:
            self._answer_result(result, request_id)

    # -- server to client ----------------------------------------------------------

    def _answer_result(self, result: dict, request_id: object) -> None:
        self._emit({"id": request_id, "ok": True, "result": result})

    def _answer_failure(self, failure, request_id: object, obj: object) -> None:
        if failure.check(ChatError):
            return self._answer_error(request_id, failure.value)
        self.sim.flag("exception", "request %s failed: %s" % (obj, failure.getErrorMessage()))
        self._answer_error(request_id, ChatError(errors.INTERNAL, "internal error"))

    def _answer_error(self, request_id: object, error: ChatError) -> None:
        self._emit({"id": request_id, "ok": False, "error": error.to_wire()})

    def push_message(self, message: dict) -> None:
        self._emit({"event": "message", "message": message})

    def _emit(self, obj: dict) -> None:
        self.process.emit(partial(self._transmit, obj))

    def _transmit(self, obj: dict) -> None:
        if not self.server_open:
            return
        self._down_due = due = self._due(self._down_due)
        self.sim.clock.callLater(due - self.sim.clock.seconds(), self._deliver, _wire(obj))

    def _deliver(self, obj: dict) -> None:
        if self.client_open:
            self.client.received(self, obj)
            if "id" in obj and self.sim.nemesis.armed:
                self.sim.nemesis.acked(self, obj)

    # -- failures ----------------------------------------------------------------------

    def reset(self) -> None:
        """
        A reset: in-flight data is lost; both ends learn it.
        """
        if not (self.client_open or self.server_open):
            return
        client_knew, self.client_open = self.client_open, False
        if self.server_open:
            self.server_open = False
            self.process.receive(partial(self.handler.connection_lost, self))
        if client_knew:
            self.sim.clock.callLater(self.sim.client_delay(), self.client.lost, self, "reset")

    def server_died(self) -> None:
        self.server_open = False
        if self.client_open:
            self.client_open = False
            # The client's kernel learns from the peer's RST or silence;
            # on one host, at once.
            self.sim.clock.callLater(
                self.sim.client_delay(), self.client.lost, self, "server died"
            )
