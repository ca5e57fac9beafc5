# -*- test-case-name: tests.test_cli -*-
"""
The C{replichat} command: the interactive chat client, the cluster status
table, one scripted sub-command per chat operation, and the admin commands
C{leave} and C{force-lead}, which talk to a server's peer port (AMP,
authenticated with the configuration's C{secret_file}).

Exit status: 0 on success, 1 when the cluster refused the operation or could
not be reached (C{error: CODE: MESSAGE} on standard error), 2 for a usage or
configuration error.  When standard output is closed early (C{replichat
status | head -1}) the command exits quietly with status 1.  Passwords never
appear as arguments: they come from C{REPLICHAT_PASSWORD} or a prompt.
"""

import argparse
import getpass
import json
import os
import sys

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import react

from replichat.client import (
    CONNECTION_ERRORS,
    ChatClient,
    ChatError,
    ServerUnreachable,
    query_node,
)
from replichat.config import ConfigError, load_config
from replichat.errors import NOT_LEADER, UNAVAILABLE
from replichat.peercommands import ForceLead, Leave
from replichat.peerproto import AdminCallFailed, admin_call, load_key
from replichat.scripts import output

__all__ = ["build_parser", "main", "prepare", "run"]

PASSWORD_ENV = "REPLICHAT_PASSWORD"
CONFIG_ENV = "REPLICHAT_CONFIG"

#: Sub-commands that log in first, with C{--user}.
SESSION_COMMANDS = {"send", "read", "history", "delete", "delete-account"}

#: Sub-commands that talk to a server's peer port, with the peer secret.
ADMIN_COMMANDS = {"leave", "force-lead"}

#: Error codes of the admin commands (the peer port answers with a sentence
#: only): the server refused, or a node has no peer address in the file.
REFUSED = "refused"
UNKNOWN_NODE = "unknown_node"


class UsageFailure(Exception):
    """
    The command line cannot be carried out (exit status 2).
    """


@frozen
class Invocation:
    """
    A checked command line, ready to run.

    @ivar args: the parsed arguments.
    @ivar nodes: the configured L{NodeAddress}es (empty without C{--config}).
    @ivar addresses: C{(host, client_port)} to try, C{--server} first.
    @ivar password: the password the command needs, or L{None}.
    @ivar key: the peer secret, for the admin commands; else L{None}.
    """

    args: argparse.Namespace
    nodes: list
    addresses: list
    password: str | None
    key: bytes | None = None


def parse_server(text):
    """
    Parse C{HOST:PORT} (C{[V6ADDR]:PORT} for IPv6) for C{--server}.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got {!r}".format(text))
    return (host, int(port))


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got {!r}".format(text))
    return int(text)


def _count(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError("expected an integer >= 0, got {!r}".format(text))
    return int(text)


def build_parser(environ=os.environ):
    """
    @return: the C{argparse} parser for the whole command line.
    """
    parser = argparse.ArgumentParser(
        prog="replichat",
        description="Client and admin tool for a replichat cluster.",
        epilog="Passwords are read from $%s or asked for; never give them as arguments."
        " Exit status: 0 success, 1 refused or unreachable, 2 usage or configuration error."
        % PASSWORD_ENV,
    )
    parser.add_argument(
        "--config", metavar="FILE", default=environ.get(CONFIG_ENV),
        help="cluster configuration (default: $%s)" % CONFIG_ENV,
    )
    parser.add_argument(
        "--server", metavar="HOST:PORT", type=parse_server,
        help="connect to this server first (its client port)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="how long to keep retrying through failovers (default 10)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, text, user=False, description=None, epilog=None):
        sub = commands.add_parser(
            name, help=text, description=description or text, epilog=epilog
        )
        if user:
            sub.add_argument("--user", required=True, metavar="USER", help="log in as USER")
        return sub

    command("chat", "open the interactive chat client")
    command("status", "ask every configured server for its state; print a table")
    command("hello", "show the first reachable server's role and leader")
    command("cluster", "show the cluster as the first reachable server sees it")
    command("create-account", "create an account").add_argument("username", metavar="USER")
    command("login", "log in and print the session token").add_argument("username", metavar="USER")
    command("resume", "resume a session; print its user and unread count").add_argument(
        "token", metavar="TOKEN", help="a token that login printed"
    )
    command("logout", "end a session").add_argument(
        "token", metavar="TOKEN", help="a token that login printed"
    )
    sub = command("list", "list accounts matching a glob pattern")
    sub.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    sub.add_argument("--offset", type=_count, default=0, metavar="N", help="skip N names")
    sub.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N names")
    sub = command("send", "send a message", user=True)
    sub.add_argument("to", metavar="TO")
    sub.add_argument("text", nargs="+", metavar="TEXT", help="the words of the message")
    command("read", "read unread messages, oldest first", user=True).add_argument(
        "--limit", type=_positive, default=10, metavar="N", help="at most N (default 10)"
    )
    sub = command("history", "show messages, newest first", user=True)
    sub.add_argument("--with", dest="with_", metavar="USER", help="only with this account")
    sub.add_argument("--before", type=_count, metavar="ID", help="only older than message ID")
    sub.add_argument("--limit", type=_positive, metavar="N", help="at most N messages")
    command("delete", "delete your messages", user=True).add_argument(
        "ids", nargs="+", type=_count, metavar="ID"
    )
    command("delete-account", "delete your account (password confirms)", user=True)
    admin_epilog = (
        "Talks to a server's peer port and authenticates with the secret_file of"
        " --config, so run it where that file is readable and the peer ports reachable."
    )
    command(
        "leave",
        "remove server ID from the cluster for good (asks the leader)",
        description="Remove server ID from the cluster for good: the leader commits a"
        " configuration entry without it (a leaving leader hands over first).  The id"
        " is retired: a removed server never comes back under it.",
        epilog=admin_epilog,
    ).add_argument("node", type=_positive, metavar="ID", help="the server to remove")
    command(
        "force-lead",
        "make server ID lead without the missing members; may lose commits only they"
        " hold, so pick the survivor with the highest last index in status",
        description="Make server ID, which is waiting for an election after a full outage,"
        " lead without waiting any longer for the missing members of its last live set."
        "  This may lose commits held only by a missing member: use it only when one is"
        " lost for good, and give it to the survivor with the highest last index (shown"
        " by status).  Then remove the lost server with leave.",
        epilog=admin_epilog,
    ).add_argument("node", type=_positive, metavar="ID", help="the server to make lead")
    return parser


def read_password(args, environ, ask):
    """
    The password a command needs: C{$REPLICHAT_PASSWORD}, else a prompt
    (twice for a new account, so a typo cannot lock its owner out).

    @return: the password, or L{None} if the command needs none.
    @raise UsageFailure: if the two entries differ.
    """
    user = getattr(args, "user", None) or getattr(args, "username", None)
    if args.command not in SESSION_COMMANDS | {"create-account", "login"}:
        return None
    if PASSWORD_ENV in environ:
        return environ[PASSWORD_ENV]
    password = ask("Password for {}: ".format(user))
    if args.command == "create-account" and ask("Repeat the password: ") != password:
        raise UsageFailure("the passwords differ")
    return password


def prepare(argv, environ=os.environ, ask=getpass.getpass, load=load_config):
    """
    Parse and check the command line, read the configuration and password:
    everything that may need the terminal or fail with status 2, done before
    the reactor runs.

    @raise SystemExit: (from C{argparse}) for a usage error.
    @raise UsageFailure: for a command line that parses but cannot work.
    @raise ConfigError: for a bad configuration file.
    """
    args = build_parser(environ).parse_args(argv)
    nodes, key = [], None
    needs_config = args.command == "status" or args.command in ADMIN_COMMANDS
    if args.config is not None:
        config = load(args.config)
        nodes = list(config.nodes.values())
        if args.command in ADMIN_COMMANDS:
            key = load_key(config)
    elif needs_config or args.server is None:
        alternative = "" if needs_config else " (or --server)"
        raise UsageFailure("--config FILE is required" + alternative)
    if args.command == "force-lead" and args.node not in {node.id for node in nodes}:
        raise UsageFailure(
            "node {} is not in {}, so its peer address is unknown".format(args.node, args.config)
        )
    addresses = [(node.host, node.client_port) for node in nodes]
    if args.server is not None:
        addresses = [args.server] + [a for a in addresses if a != args.server]
    return Invocation(args, nodes, addresses, read_password(args, environ, ask), key)


def format_result(command, result, user=None):
    """
    The human-readable output of a scripted sub-command.

    @param command: the sub-command name (C{send}, ...).
    @param result: its C{result} dict.
    @param user: the logged-in username, shown as C{you} in messages.
    @return: text without a trailing newline.
    """
    if command == "create-account":
        return "created account {}".format(result.get("username"))
    if command == "login":
        return str(result.get("token"))
    if command == "resume":
        return "{} ({} unread)".format(result.get("username"), result.get("unread"))
    if command == "logout":
        return "logged out"
    if command == "list":
        names = list(result.get("accounts", ()))
        return "\n".join(names + ["({} of {} accounts)".format(len(names), result.get("total"))])
    if command == "send":
        return "sent " + output.format_message(result.get("message", {}), me=user)
    if command in ("read", "history"):
        lines = [output.format_message(m, me=user) for m in result.get("messages", ())]
        if command == "read" and result.get("remaining"):
            lines.append("({} more unread)".format(result["remaining"]))
        return "\n".join(lines) or "no messages"
    if command == "delete":
        return "deleted {} message(s)".format(result.get("deleted"))
    if command == "delete-account":
        return "deleted account {}".format(user)
    if command == "hello":
        return output.format_hello(result)
    if command == "leave":
        return "node {} left the cluster; its id is retired".format(result.get("node"))
    if command == "force-lead":
        return (
            "node {} will lead without waiting for the missing members of its last"
            " live set; check with status".format(result.get("node"))
        )
    if command == "cluster":
        return "{}, epoch {}\n{}".format(
            output.format_leader(result.get("leader")),
            result.get("epoch"),
            output.format_table(output.cluster_rows(result)),
        )
    return json.dumps(result, ensure_ascii=False)


async def _logout(client, token):
    # A session belongs to a connection: take it over, then end it.
    await client.resume(token)
    return await client.logout()


#: Sub-command -> (client method, arguments from the parsed command line).
OPERATIONS = {
    "create-account": lambda c, a, pw: c.create_account(a.username, pw),
    "login": lambda c, a, pw: c.login(a.username, pw),
    "resume": lambda c, a, pw: c.resume(a.token),
    "logout": lambda c, a, pw: _logout(c, a.token),
    "list": lambda c, a, pw: c.list_accounts(a.pattern, a.offset, a.limit),
    "send": lambda c, a, pw: c.send(a.to, " ".join(a.text)),
    "read": lambda c, a, pw: c.read(a.limit),
    "history": lambda c, a, pw: c.history(a.with_, a.before, a.limit),
    "delete": lambda c, a, pw: c.delete_messages(a.ids),
    "delete-account": lambda c, a, pw: c.delete_account(pw),
}


async def run_operation(client, invocation):
    """
    Log in if the command needs a session, perform it, log out again.

    @return: the operation's C{result}.
    """
    args = invocation.args
    try:
        if args.command in SESSION_COMMANDS:
            await client.login(args.user, invocation.password)
        result = await OPERATIONS[args.command](client, args, invocation.password)
        if args.command in SESSION_COMMANDS - {"delete-account"}:
            try:
                await client.logout()
            except ChatError:
                pass  # the work is done; an unfinished logout only leaves a session to expire
        return result
    finally:
        await client.close()


async def ask_first(reactor, addresses, op, query):
    """
    Ask the first server that answers (C{hello} and C{cluster} report on a
    server, so no leader is followed).
    """
    error = None
    for host, port in addresses:
        try:
            return await query(reactor, host, port, op)
        except CONNECTION_ERRORS as e:
            error = e
    raise ServerUnreachable("no server answered (last error: {})".format(error))


async def gather_status(reactor, nodes, query):
    """
    Ask every configured node for C{hello} and C{cluster}, concurrently, so
    down nodes cost one timeout in all.

    @return: the rows of L{output.status_rows}, and whether any node answered.
    """
    async def ask(node):
        hello = cluster = None
        try:
            hello = await query(reactor, node.host, node.client_port, "hello")
            cluster = await query(reactor, node.host, node.client_port, "cluster")
        except (ChatError, *CONNECTION_ERRORS):
            pass  # what it did answer is shown; the rest stays unknown
        return hello, cluster

    answers = await DeferredList([Deferred.fromCoroutine(ask(node)) for node in nodes])
    hellos, own = {}, {}
    for node, (_, (hello, cluster)) in zip(nodes, answers):
        # A malformed answer counts as none.
        hellos[node.id] = hello if isinstance(hello, dict) else None
        if isinstance(hello, dict) and isinstance(cluster, dict):
            own[node.id] = cluster
    # The leader's view of indexes and liveness is the authoritative one;
    # without a leader, the first node that answered will do.
    leaders = [i for i in own if hellos[i].get("role") == "leader"]
    chosen = own.get(leaders[0] if leaders else next(iter(own), None))
    answered = any(hello is not None for hello in hellos.values())
    return output.status_rows(nodes, hellos, chosen, own), answered


def _leader_id(leader):
    """
    The id in a C{hello} answer's C{leader} (an object, or an id; 0 and
    L{None} mean none), or L{None}.
    """
    if isinstance(leader, dict):
        leader = leader.get("id")
    if isinstance(leader, int) and not isinstance(leader, bool) and leader > 0:
        return leader
    return None


async def find_leader(reactor, addresses, query):
    """
    Ask every address for C{hello}, concurrently (as C{status} does): the
    leader is a server that says it leads, else the one the first answer
    names.

    @return: the leader's id.
    @raise ServerUnreachable: if no server answered.
    @raise ChatError: (C{unavailable}) if none knows a leader.
    """
    async def ask(host, port):
        try:
            return await query(reactor, host, port, "hello")
        except (ChatError, *CONNECTION_ERRORS):
            return None

    answers = await DeferredList(
        [Deferred.fromCoroutine(ask(host, port)) for host, port in addresses]
    )
    hellos = [hello for _, hello in answers if isinstance(hello, dict)]
    if not hellos:
        raise ServerUnreachable("no server answered, so the leader is unknown")
    for hello in hellos:
        if hello.get("role") == "leader" and _leader_id(hello.get("node")):
            return hello["node"]
    for hello in hellos:
        leader = _leader_id(hello.get("leader"))
        if leader is not None:
            return leader
    raise ChatError(
        UNAVAILABLE, "no server knows a leader (an election may be under way); retry shortly"
    )


def _node(invocation, node_id, who):
    """
    The configured L{NodeAddress} of C{node_id}.

    @param who: how to name it in the error (C{"node 4 (the leader)"}).
    @raise ChatError: (C{unknown_node}) if the configuration lacks it.
    """
    for node in invocation.nodes:
        if node.id == node_id:
            return node
    raise ChatError(
        UNKNOWN_NODE,
        "{} is not in {}, so its peer port is unknown; add it to the file's nodes".format(
            who, invocation.args.config or "the configuration"
        ),
    )


async def _admin_call(reactor, invocation, admin, server, command, **kwargs):
    """
    Call an admin command on the peer port of C{server} (a L{NodeAddress}).

    @return: the answer (C{ok}, C{error}).
    @raise ServerUnreachable: if there is no answer.
    """
    try:
        answer = await admin(
            reactor,
            server.host,
            server.peer_port,
            invocation.key,
            command,
            timeout=invocation.args.timeout,
            **kwargs,
        )
    except AdminCallFailed as e:
        raise ServerUnreachable("node {}: {}".format(server.id, e))
    if not isinstance(answer, dict):
        raise ChatError(REFUSED, "node {} gave a malformed answer".format(server.id))
    return answer


def _refusal(node_id, answer):
    reason = answer.get("error") or "no reason given"
    return ChatError(REFUSED, "node {} refused: {}".format(node_id, reason))


def _is_not_leader(answer):
    # The peer port answers with a sentence only ("node 2 is not the
    # leader"); a code, if a server sends one, says it better.
    if answer.get("code") is not None:
        return answer["code"] == NOT_LEADER
    return "not the leader" in str(answer.get("error", ""))


async def _named_leader(reactor, invocation, node, answer, query):
    """
    The leader that C{node}, which refused as not the leader, names: the
    answer's C{leader} if it has one, else the one its C{hello} names.
    """
    named = _leader_id(answer.get("leader"))
    if named is not None:
        return named
    try:
        hello = await query(reactor, node.host, node.client_port, "hello")
    except (ChatError, *CONNECTION_ERRORS):
        return None
    return _leader_id(hello.get("leader")) if isinstance(hello, dict) else None


async def run_leave(reactor, invocation, query, admin):
    """
    C{leave ID}: find the leader, ask it (its peer port) to remove ID; if it
    is no longer the leader, ask once more at the leader it names.

    @return: the result (C{node}, C{left}, C{leader}).
    """
    target = invocation.args.node
    leader = await find_leader(reactor, invocation.addresses, query)
    for attempt in range(2):
        node = _node(invocation, leader, "node {} (the leader)".format(leader))
        answer = await _admin_call(reactor, invocation, admin, node, Leave, node=target)
        if answer.get("ok"):
            return {"node": target, "left": True, "leader": leader}
        if attempt or not _is_not_leader(answer):
            raise _refusal(leader, answer)
        named = await _named_leader(reactor, invocation, node, answer, query)
        if named is None or named == leader:
            raise ChatError(
                UNAVAILABLE,
                "node {} is not the leader and names no other; retry shortly".format(leader),
            )
        leader = named


async def run_force_lead(reactor, invocation, admin):
    """
    C{force-lead ID}: tell server ID (its peer port) to lead without the
    missing members of its last live set.

    @return: the result (C{node}, C{forced}).
    """
    target = invocation.args.node
    node = _node(invocation, target, "node {}".format(target))
    answer = await _admin_call(reactor, invocation, admin, node, ForceLead)
    if not answer.get("ok"):
        raise _refusal(target, answer)
    return {"node": target, "forced": True}


def _print_json(value, out):
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True), file=out)


async def main(
    reactor,
    invocation,
    out=sys.stdout,
    err=sys.stderr,
    make_client=ChatClient,
    query=query_node,
    admin=admin_call,
):
    """
    Carry out a prepared command line.

    @param make_client: makes the L{ChatClient} of the chat operations.
    @param query: L{query_node}, for C{hello}, C{cluster} and C{status}.
    @param admin: L{admin_call}, for C{leave} and C{force-lead}.
    @return: the exit status.
    """
    args = invocation.args
    try:
        if args.command == "chat":
            from replichat.scripts.chat import run_chat

            client = make_client(invocation.addresses, reactor, timeout=args.timeout)
            return await run_chat(reactor, client)
        if args.command == "status":
            rows, answered = await gather_status(reactor, invocation.nodes, query)
            if args.json:
                _print_json(rows, out)
            else:
                print(output.format_table(rows), file=out)
            if not answered:
                raise ServerUnreachable("no configured server answered")
            return 0
        if args.command in ("hello", "cluster"):
            result = await ask_first(reactor, invocation.addresses, args.command, query)
        elif args.command == "leave":
            result = await run_leave(reactor, invocation, query, admin)
        elif args.command == "force-lead":
            result = await run_force_lead(reactor, invocation, admin)
        else:
            client = make_client(invocation.addresses, reactor, timeout=args.timeout)
            result = await run_operation(client, invocation)
    except ChatError as e:
        print("error: {}: {}".format(e.code, e.message), file=err)
        return 1
    user = getattr(args, "user", None) or getattr(args, "username", None)
    if args.json:
        _print_json(result, out)
    else:
        print(format_result(args.command, result, user), file=out)
    return 0


def _silence_stdout():
    """
    Point standard output at C{/dev/null}, so that nothing more written to
    it (Python flushes it at exit) fails again.
    """
    try:
        fileno = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real file: nothing will complain at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fileno)
    finally:
        os.close(devnull)


async def _main_or_broken_pipe(reactor, invocation, main=main):
    """
    L{main}; a reader that went away (C{replichat status | head -1}) makes
    the status 1, without a traceback.
    """
    try:
        return await main(reactor, invocation)
    except BrokenPipeError:
        _silence_stdout()
        return 1


def _react_main(reactor, invocation):
    def exit_with(code):
        if code:
            raise SystemExit(code)

    running = _main_or_broken_pipe(reactor, invocation)
    return Deferred.fromCoroutine(running).addCallback(exit_with)


def run(argv=None):
    """
    The console script's entry point.
    """
    try:
        try:
            _run(argv)
        finally:
            # Flushed here rather than at exit, where a failure could only
            # be reported as "Exception ignored".
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(1)


def _run(argv):
    try:
        invocation = prepare(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        for line in str(e).splitlines():
            print("replichat: config error: " + line, file=sys.stderr)
        sys.exit(2)
    except UsageFailure as e:
        print("replichat: error: {}".format(e), file=sys.stderr)
        sys.exit(2)
    react(_react_main, (invocation,))


if __name__ == "__main__":
    run()
