# -*- test-case-name: tests.test_cli -*-
"""
The interactive client, C{replichat chat}.

Standard input is read as a Twisted protocol (L{StandardIO}), not with
C{input()}, so the reactor keeps running while the user types and pushed
messages are printed the moment they arrive, each on its own line.  Lines
starting with C{/} are commands (C{/help} lists them); after C{/send USER},
a plain line is sent to USER too.
"""

import os
from collections import deque

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from replichat.client import ChatError
from replichat.scripts import output

__all__ = ["COMMANDS", "ChatConsole", "run_chat"]

#: command -> (arguments, what it does), in the order /help shows them.
COMMANDS = {
    "register": ("USER [PASSWORD]", "create an account and log in (asks for the password)"),
    "login": ("USER [PASSWORD]", "log in (asks for the password)"),
    "logout": ("", "log out"),
    "who": ("[PATTERN]", "list accounts, optionally matching a glob such as a*"),
    "send": ("USER TEXT...", "send a message; plain lines then go to USER too"),
    "read": ("[N]", "read up to N unread messages (default 10), oldest first"),
    "history": ("[USER] [N]", "show the last N messages (with USER only)"),
    "delete": ("ID [ID...]", "delete your messages by id"),
    "delete-account": ("[PASSWORD]", "delete your account (asks for the password)"),
    "status": ("", "show the cluster and this connection"),
    "help": ("", "show this list"),
    "quit": ("", "leave (the session stays resumable)"),
}


def terminal_echo(fd):
    """
    @return: a function turning the terminal's echo on C{fd} on or off, for
        reading passwords without showing them.
    """
    import termios

    def set_echo(enabled):
        try:
            attributes = termios.tcgetattr(fd)
            if enabled:
                attributes[3] |= termios.ECHO
            else:
                attributes[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSANOW, attributes)
        except termios.error:
            pass  # not a terminal after all: nothing to hide

    return set_echo


@implementer(IHalfCloseableProtocol)
class ChatConsole(LineReceiver):
    """
    The chat user interface on a line-oriented transport (standard I/O).

    Input lines are carried out one at a time, in order, as a person typing
    expects (and as a script piping commands in needs); pushed messages are
    printed whenever they come.

    @ivar done: fires when the console has closed (C{/quit}, or the end of
        input once the commands before it are done).
    """

    delimiter = b"\n"
    log = Logger()

    def __init__(self, client, interactive=False, set_echo=None):
        """
        @param client: a L{replichat.client.ChatClient}.
        @param interactive: whether a person types at a terminal: then a
            prompt is shown and pushed lines clear the half-typed line first.
        @param set_echo: see L{terminal_echo}, or L{None}.
        """
        self.client = client
        self.interactive = interactive
        self._set_echo = set_echo
        self._secret = None
        self._peer = None
        self._lines = deque()
        self._busy = self._running = self._input_ended = False
        self.done = Deferred()
        client.on_message = self._show_message
        client.on_status = lambda text: self.say("* " + text)

    # -- output ------------------------------------------------------------

    def _prompt(self):
        return "{}> ".format(self.client.username or "").encode("utf-8")

    def say(self, text):
        """
        Print C{text} on its own line(s).
        """
        data = text.encode("utf-8") + b"\n"
        if self.interactive:
            # Start at column 0 over whatever was half typed, then re-prompt.
            data = b"\r\x1b[K" + data + self._prompt()
        self.transport.write(data)

    def _show_message(self, message):
        self.say(output.format_message(message, me=self.client.username))

    # -- input -------------------------------------------------------------

    def connectionMade(self):
        self.say("replichat chat: type /help for commands")
        # Commands typed meanwhile wait, so their output follows this.
        self._busy = True
        self._spawn(self.client.connect()).addBoth(self._idle)

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self._secret is not None:
            secret, self._secret = self._secret, None
            self._echo(True)
            # The prompt left the cursor on its line and the Enter was not
            # echoed.
            self.transport.write(b"\n")
            secret.callback(text)
            return
        self._lines.append(text)
        self._next()

    def _next(self):
        """
        Carry out queued lines until one has to wait.
        """
        if self._running:
            return  # re-entered by a command that finished at once
        self._running = True
        try:
            while not self._busy and self._lines:
                work = self._command(self._lines.popleft())
                if work is not None:
                    self._busy = True
                    work.addBoth(self._idle)
            if not self._busy and self._input_ended:
                self.transport.loseConnection()
        finally:
            self._running = False

    def _idle(self, ignored):
        self._busy = False
        self._next()

    def _command(self, text):
        """
        Start the command on one input line.

        @return: a L{Deferred} that fires when it is done, or L{None} if it
            already is.
        """
        text = text.strip()
        if not text:
            if self.interactive:
                self.transport.write(self._prompt())
            return None
        if not text.startswith("/"):
            if self._peer is None:
                self.say("to send, use /send USER TEXT (type /help for commands)")
                return None
            return self._spawn(self.cmd_send("{} {}".format(self._peer, text)))
        name, _, rest = text[1:].partition(" ")
        if name not in COMMANDS:
            self.say("unknown command /{}; type /help for the list".format(name))
            return None
        return self._spawn(getattr(self, "cmd_" + name.replace("-", "_"))(rest.strip()))

    def readConnectionLost(self):
        """
        The end of input: finish the queued commands, then close.
        """
        self._input_ended = True
        self._next()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self._secret is not None:
            self._echo(True)
            secret, self._secret = self._secret, None
            secret.cancel()
        if not self.done.called:
            self.done.callback(None)

    def _echo(self, enabled):
        if self._set_echo is not None:
            self._set_echo(enabled)

    def ask_secret(self, prompt):
        """
        Read the next line as a secret, not echoed on a terminal.

        @return: a L{Deferred} firing with the line.
        """
        if self._lines:
            # Typed (or piped) ahead: the secret is already here.
            return succeed(self._lines.popleft())
        self._echo(False)
        self.transport.write(prompt.encode("utf-8"))
        self._secret = Deferred()
        return self._secret

    async def _password(self, given, confirm=False):
        if given:
            return given
        password = await self.ask_secret("password: ")
        if confirm and await self.ask_secret("repeat password: ") != password:
            raise ChatError("bad_request", "the passwords differ")
        return password

    def _spawn(self, work):
        """
        Run a command (a coroutine or Deferred), printing how it failed.
        """
        if not isinstance(work, Deferred):
            work = Deferred.fromCoroutine(work)
        return work.addErrback(self._failed)

    def _failed(self, failure):
        if failure.check(ChatError):
            self.say("error: {}: {}".format(failure.value.code, failure.value.message))
        elif not failure.check(CancelledError):
            self.log.failure("chat command failed", failure)
            self.say("error: internal: {}".format(failure.value))

    def _usage(self, name):
        self.say("usage: /{} {}".format(name, COMMANDS[name][0]).rstrip())

    # -- commands ----------------------------------------------------------

    async def cmd_help(self, rest):
        width = max(len("/{} {}".format(n, a)) for n, (a, _) in COMMANDS.items())
        lines = ["/{} {}".format(n, a).ljust(width) + "  " + t for n, (a, t) in COMMANDS.items()]
        self.say("\n".join(lines))

    async def cmd_quit(self, rest):
        self._lines.clear()
        self.transport.loseConnection()

    async def cmd_register(self, rest):
        args = rest.split()
        if len(args) not in (1, 2):
            return self._usage("register")
        password = await self._password(args[1] if len(args) == 2 else None, confirm=True)
        await self.client.create_account(args[0], password)
        result = await self.client.login(args[0], password)
        self.say("registered; logged in as {} ({} unread)".format(args[0], result.get("unread", 0)))

    async def cmd_login(self, rest):
        args = rest.split()
        if len(args) not in (1, 2):
            return self._usage("login")
        password = await self._password(args[1] if len(args) == 2 else None)
        result = await self.client.login(args[0], password)
        self.say("logged in as {} ({} unread)".format(args[0], result.get("unread", 0)))

    async def cmd_logout(self, rest):
        await self.client.logout()
        self.say("logged out")

    async def cmd_who(self, rest):
        result = await self.client.list_accounts(rest or "*", 0, 100)
        names = result.get("accounts", [])
        total = result.get("total")
        self.say("accounts ({} of {}): {}".format(len(names), total, ", ".join(names)))

    async def cmd_send(self, rest):
        args = rest.split(None, 1)
        if len(args) != 2:
            return self._usage("send")
        self._peer = args[0]
        result = await self.client.send(args[0], args[1])
        message = result.get("message", {})
        self.say("sent " + output.format_message(message, me=self.client.username))

    async def cmd_read(self, rest):
        if rest and not rest.isdigit():
            return self._usage("read")
        result = await self.client.read(int(rest) if rest else 10)
        self._show_messages(result.get("messages", []), "no unread messages")
        if result.get("remaining"):
            self.say("({} more unread)".format(result["remaining"]))

    async def cmd_history(self, rest):
        args = rest.split()
        limit = int(args.pop()) if args and args[-1].isdigit() else None
        if len(args) > 1:
            return self._usage("history")
        result = await self.client.history(args[0] if args else None, None, limit)
        # The server lists newest first; a conversation reads oldest first.
        self._show_messages(list(reversed(result.get("messages", []))), "no messages")

    def _show_messages(self, messages, if_none):
        lines = [output.format_message(m, me=self.client.username) for m in messages]
        self.say("\n".join(lines) or if_none)

    async def cmd_delete(self, rest):
        ids = rest.split()
        if not ids or not all(i.isdigit() for i in ids):
            return self._usage("delete")
        result = await self.client.delete_messages([int(i) for i in ids])
        self.say("deleted {} message(s)".format(result.get("deleted")))

    async def cmd_delete_account(self, rest):
        if self.client.username is None:
            raise ChatError("not_logged_in", "log in first")
        name = self.client.username
        await self.client.delete_account(await self._password(rest or None))
        self.say("deleted account {}".format(name))

    async def cmd_status(self, rest):
        cluster = await self.client.cluster()
        address = self.client.address
        where = "{}:{}".format(*address) if address else "nowhere"
        self.say(
            "connected to {} as {}; {}, epoch {}\n{}".format(
                where,
                self.client.username or "nobody",
                output.format_leader(cluster.get("leader")),
                cluster.get("epoch"),
                output.format_table(output.cluster_rows(cluster)),
            )
        )


async def run_chat(reactor, client, stdio=StandardIO):
    """
    Run the interactive client on standard input and output until C{/quit}
    or end of input.

    @return: the exit status.
    """
    interactive = os.isatty(0)
    console = ChatConsole(client, interactive, terminal_echo(0) if interactive else None)
    stdio(console, reactor=reactor)
    await console.done
    await client.close()
    return 0
