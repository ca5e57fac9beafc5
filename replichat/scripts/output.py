# -*- test-case-name: tests.test_cli -*-
"""
Pure functions that turn protocol results into text for a human.

Kept apart from the command line and the interactive client, which both use
them, so that the output can be tested from plain dicts.
"""

import time

__all__ = [
    "cluster_rows",
    "format_hello",
    "format_leader",
    "format_message",
    "format_table",
    "status_rows",
]

#: The status table's columns: (row key, heading).
COLUMNS = [
    ("id", "ID"),
    ("address", "ADDRESS"),
    ("role", "ROLE"),
    ("epoch", "EPOCH"),
    ("last_index", "LAST INDEX"),
    ("commit_index", "COMMIT INDEX"),
    ("live", "LIVE"),
]


def format_message(message, me=None, now=None):
    """
    One message on one line: C{[17] bob -> you (12:01:03): yo}.

    @param message: a message dict (C{id}, C{from}, C{to}, C{text},
        C{sent_at}).
    @param me: the logged-in username, shown as C{you}.
    @param now: the current time (seconds since the epoch), to decide whether
        the date is worth showing; L{None} for the real time.
    @return: the line, without a newline.
    """
    now = time.time() if now is None else now

    def who(name):
        return "you" if me is not None and name == me else str(name)

    sent_at = message.get("sent_at")
    if isinstance(sent_at, (int, float)):
        local = time.localtime(sent_at)
        # Today's messages need only the time; older ones need the date.
        same_day = local[:3] == time.localtime(now)[:3]
        when = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", local)
    else:
        when = "?"
    return "[{}] {} -> {} ({}): {}".format(
        message.get("id"),
        who(message.get("from")),
        who(message.get("to")),
        when,
        message.get("text", ""),
    )


def format_leader(leader):
    """
    A C{leader} object as C{leader 1 (host:port)}, or C{no leader}.
    """
    if isinstance(leader, dict):
        return "leader {} ({}:{})".format(leader.get("id"), leader.get("host"), leader.get("port"))
    if leader is not None:
        return "leader {}".format(leader)
    return "no leader"


def format_hello(hello):
    """
    A C{hello} result on one line: C{node 2: follower, epoch 3, leader 1 (h:p)}.
    """
    return "node {}: {}, epoch {}, {}".format(
        hello.get("node"), hello.get("role"), hello.get("epoch"), format_leader(hello.get("leader"))
    )


def _row(node_id, address, role, epoch, info):
    return {
        "id": node_id,
        "address": address,
        "role": role,
        "epoch": epoch,
        "last_index": info.get("last_index"),
        "commit_index": info.get("commit_index"),
        "live": info.get("live"),
    }


def cluster_rows(cluster):
    """
    Table rows from one C{cluster} result alone (the server's view).

    @return: a list of row dicts with the keys of L{COLUMNS}.
    """
    rows = []
    for info in cluster.get("nodes", ()):
        address = "{}:{}".format(info.get("host"), info.get("client_port"))
        rows.append(_row(info.get("id"), address, info.get("role"), cluster.get("epoch"), info))
    return rows


def _by_id(cluster):
    return {
        info.get("id"): info for info in (cluster or {}).get("nodes", ()) if isinstance(info, dict)
    }


def status_rows(nodes, hellos, cluster, own=None):
    """
    The C{status} table's rows: one per configured node, then any node the
    cluster knows that the configuration does not (it joined later).

    @param nodes: the configured L{NodeAddress}es, in order.
    @param hellos: node id -> that node's own C{hello} result, or L{None}
        when it could not be reached (shown as role C{down}; so is a result
        that is not an object).  Any role is shown as given.
    @param cluster: a C{cluster} result (preferably the leader's) for the
        index and liveness columns, or L{None} if no node answered.
    @param own: node id -> that node's own C{cluster} result, whose entry
        for itself fills the columns C{cluster} leaves null.
    @return: a list of row dicts with the keys of L{COLUMNS}.
    """
    known = _by_id(cluster)
    for node_id, its_cluster in (own or {}).items():
        self_report = _by_id(its_cluster).get(node_id)
        if self_report is not None:
            merged = dict(self_report)
            merged.update({k: v for k, v in known.get(node_id, {}).items() if v is not None})
            known[node_id] = merged
    # Roles are shown as given: leader, follower, candidate and learner
    # today, and whatever a newer server may report tomorrow.
    hellos = {k: v for k, v in hellos.items() if isinstance(v, dict)}
    rows = []
    for node in nodes:
        hello = hellos.get(node.id)
        role, epoch = (hello.get("role"), hello.get("epoch")) if hello else ("down", None)
        address = "{}:{}".format(node.host, node.client_port)
        rows.append(_row(node.id, address, role, epoch, known.get(node.id, {})))
    configured = {node.id for node in nodes}
    for node_id, info in known.items():
        if node_id not in configured:
            hello = hellos.get(node_id)
            role = hello.get("role") if hello else info.get("role")
            epoch = hello.get("epoch") if hello else None
            address = "{}:{}".format(info.get("host"), info.get("client_port"))
            rows.append(_row(node_id, address, role, epoch, info))
    return rows


def _cell(value):
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)


def format_table(rows):
    """
    Rows as an aligned text table with a heading line.

    @param rows: row dicts with the keys of L{COLUMNS}; L{None} shows as
        C{-}, booleans as C{yes}/C{no}.
    @return: the table, lines joined by newlines, no trailing newline.
    """
    cells = [[heading for _, heading in COLUMNS]]
    cells += [[_cell(row.get(key)) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells
    )
