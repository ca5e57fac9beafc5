# -*- test-case-name: tests.test_peer,tests.test_cli -*-
"""
The server's side of the admin commands (L{peercommands.Status},
L{peercommands.Leave}, L{peercommands.ForceLead}): the responders of
L{replichat.peerconnection.PeerProtocol} that ask the node and turn its
answer, or its L{ChatError}, into the command's answer.

The client's side, L{replichat.peeradminclient.admin_call}, is what the
CLI uses.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from replichat.errors import ChatError
from replichat.peercommands import ADMIN_COMMANDS, ForceLead, Leave, Status

#: The names of the admin commands, which an authenticated connection
#: answers with the responders below.
_ADMIN_NAMES = {command.commandName for command in ADMIN_COMMANDS.values()}


class _AdminResponders(amp.CommandLocator):
    """
    The admin responders of L{replichat.peerconnection.PeerProtocol}.  They
    ask C{_owner.node} (an admin tool's own connection has no owner, so no
    node to ask), and log with C{log}, C{peer_id} and C{address}.

    A L{amp.CommandLocator} so that its responders are collected here: AMP's
    metaclass hands every responder to the next locator class defined.
    """

    async def _admin(self, command, call):
        """
        Run C{call(node)} for an admin command: its result (awaited if a
        L{Deferred}), or a L{ChatError} as the answer's C{error}.

        @return: C{(ok, error, result)}.
        """
        node = getattr(self._owner, "node", None)
        self.log.info(
            "admin command {command} from node {peer} at {address}",
            command=command,
            peer=self.peer_id,
            address=self.address,
        )
        if node is None:
            return False, "no server here to ask", None
        try:
            result = call(node)
            if isinstance(result, Deferred):
                result = await result
        except ChatError as e:
            return False, e.message, None
        except Exception:
            self.log.failure("admin command {command} failed", command=command)
            return False, "internal error; see the server's log", None
        return True, "", result

    @Status.responder
    async def _status(self):
        ok, error, status = await self._admin(
            "status", lambda node: json.dumps(node.status())
        )
        return {"ok": ok, "error": error, "status": status or ""}

    @Leave.responder
    async def _leave(self, node):
        ok, error, _ = await self._admin("leave", lambda n: n.leave(node))
        return {"ok": ok, "error": error}

    @ForceLead.responder
    async def _force_lead(self):
        ok, error, _ = await self._admin("force_lead", lambda node: node.force_lead())
        return {"ok": ok, "error": error}
