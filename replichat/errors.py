# -*- test-case-name: tests.test_state -*-
"""
The errors a client can be answered with (DESIGN.md §4).

A L{ChatError} travels from wherever a request is refused (validation, the
state machine, the node) to the line protocol, which turns it into
C{{"ok": false, "error": {"code": ..., "message": ...}}}.
"""

BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
TOO_LARGE = "too_large"
NOT_LEADER = "not_leader"
UNAVAILABLE = "unavailable"
NOT_LOGGED_IN = "not_logged_in"
BAD_CREDENTIALS = "bad_credentials"
USERNAME_TAKEN = "username_taken"
NO_SUCH_USER = "no_such_user"
NOT_FOUND = "not_found"
RATE_LIMITED = "rate_limited"
INTERNAL = "internal"


class ChatError(Exception):
    """
    A request refused with an error code from the protocol's list.

    @ivar code: one of the module's code constants.
    @ivar message: a sentence for a human.
    @ivar extra: more fields for the error object (C{leader} for
        C{not_leader}).
    """

    def __init__(self, code: str, message: str, **extra: object) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.extra = extra

    def to_wire(self) -> dict:
        """
        The C{error} object of a protocol answer.
        """
        return {"code": self.code, "message": self.message, **self.extra}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChatError):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash((self.code, self.message))
