# -*- test-case-name: tests.test_chaos -*-
"""
What a chaos run leaves behind: L{summarize} makes its JSON summary (ops by
status, faults by kind, notes, anomalies, exit status),
L{render_summary} prints it for people, and L{write_run_files} writes the
work directory's files (C{history.jsonl}, C{attempts.jsonl},
C{anomalies.txt}, C{faults.jsonl}, C{summary.json}).
"""

from __future__ import annotations

import collections
import json
import os


def summarize(options, record, history, checked: bool, status: int) -> dict:
    """
    The summary of a run, as JSON.

    @param options: the run's options (L{replichat.testing.chaos.parse_args}).
    @param record: its L{replichat.testing.chaosrecord.RunRecord}.
    @param history: its L{replichat.testing.history.History}.
    @param checked: whether the checker ran.
    @param status: the exit status.
    """
    ops: dict = collections.defaultdict(collections.Counter)
    attempts = 0
    for op in history.ops:
        ops[op.op][op.status or "pending"] += 1
        attempts += op.attempts
    return {
        "seed": options.seed,
        "planted": list(options.plant),
        "duration": options.duration,
        "servers": options.servers,
        "clients": options.clients,
        "directory": options.directory,
        "started_at": record.started,
        "ops": {name: dict(counts) for name, counts in sorted(ops.items())},
        "operations": len(history.ops),
        "attempts": attempts,
        "pushes": len(history.pushes),
        "faults": dict(sorted(record.faults.items())),
        "notes": record.notes,
        "anomalies": [{"kind": a.kind, "detail": a.text, "ops": list(a.ops),
                       "indexes": list(a.indexes), "nodes": list(a.nodes)}
                      for a in record.anomalies],
        "harness_errors": record.harness_errors,
        "checked": checked,
        "status": status,
    }


def write_run_files(directory: str, summary: dict, history, clients, record, report) -> None:
    """
    Write a run's files into its work directory: the history, every
    client's attempts, the checker's anomalies described (if there are
    anomalies and the checker ran: C{report} is not L{None}), the fault
    log, and the summary.
    """
    history.dump(os.path.join(directory, "history.jsonl"))
    with open(os.path.join(directory, "attempts.jsonl"), "w") as f:
        for client in clients:
            for number, node, outcome, at in client.trace:
                f.write(json.dumps({"op": number, "client": client.name, "node": node,
                                    "outcome": outcome, "at": at}) + "\n")
    if record.anomalies and report is not None:
        with open(os.path.join(directory, "anomalies.txt"), "w") as f:
            f.write(report.describe(history, limit=200) + "\n")
    with open(os.path.join(directory, "faults.jsonl"), "w") as f:
        for event in record.fault_log:
            f.write(json.dumps(event) + "\n")
    with open(os.path.join(directory, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


def _status_order(status: str) -> tuple:
    return (["ok", "fail", "unknown", "pending"].index(status)
            if status in ("ok", "fail", "unknown", "pending") else 9, status)


def render_summary(summary: dict) -> str:
    """
    The summary, for people.
    """
    lines = ["chaos: seed %s, %s s, %d servers, %d clients; %d ops (%d attempts), %d pushes"
             % (summary["seed"], summary["duration"], summary["servers"], summary["clients"],
                summary["operations"], summary["attempts"], summary["pushes"])]
    if summary["planted"]:
        lines.append("planted bugs: " + ", ".join(summary["planted"]))
    lines.append("ops by status:")
    for name, counts in summary["ops"].items():
        lines.append("  %-16s %s" % (name, "  ".join(
            "%s %d" % item for item in sorted(counts.items(), key=lambda i: _status_order(i[0])))))
    lines.append("faults: " + (", ".join("%s %d" % item for item in summary["faults"].items())
                               or "none"))
    for note in summary["notes"]:
        lines.append("note: " + note)
    for error in summary["harness_errors"]:
        lines.append("HARNESS ERROR: " + error.rstrip())
    lines.append("anomalies: %d" % (len(summary["anomalies"]),))
    for anomaly in summary["anomalies"][:30]:
        lines.append("  %s: %s" % (anomaly["kind"], anomaly["detail"]))
    if len(summary["anomalies"]) > 30:
        lines.append("  ... (%d more in summary.json)" % (len(summary["anomalies"]) - 30,))
    verdict = {0: "clean", 1: "ANOMALIES", 2: "HARNESS FAILED"}[summary["status"]]
    lines.append("result: %s" % (verdict,))
    return "\n".join(lines)
