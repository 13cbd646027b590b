"""dotted_order for spans, whose parents may come later, in another request.

A run's dotted_order is its ancestors' segments and its own, joined by dots; a segment is the run's
start time (``%Y%m%dT%H%M%S%fZ``) and its id, as LangSmith writes them, so listings (ordered by
dotted_order) show a trace depth first, each run's children by start time. A span's parent is taken
from the same request, else from the database; a parent that has not come yet gets a stand-in
segment (the child's start time and the parent's id), which puts the orphan where its parent will
be. When a run is stored, every row of its trace whose dotted_order holds ``Z<its id>.`` -- its
descendants that came first -- gets the part up to there replaced by the run's own dotted_order
(``relink``). Each run repairs its descendants when it comes, so any order of arrival ends in the
same orders as if the parents had come first. ``relink`` runs after the request's commit, under a
lock per trace: of two requests holding a parent and its child, the later one to relink sees both.
It is idempotent: when it fails after the commit, the request is answered 503 and its retry (spans
stored already) relinks them again (handlers.py, reader.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from handler.otel.values import compact
from handler.runs.schema import MAX_DOTTED_ORDER_BYTES
from handler.store.db import Database

# A computed order (ASCII) stays within the field rule's limit (about 30 levels of spans); a run
# deeper than that keeps none (it is listed, by the index, before its trace's other runs).
MAX_ORDER_CHARS = MAX_DOTTED_ORDER_BYTES


def segment(start_nanos: int, run_id: str) -> str:
    return f"{compact(start_nanos)}Z{run_id}"


class Node:
    """A run in the tree: ids as text (canonical UUIDs, as PostgreSQL writes them)."""

    __slots__ = ("id", "trace_id", "parent", "start", "dotted_order")

    def __init__(self, run_id: str, trace_id: str, parent: str | None, start: int) -> None:
        self.id, self.trace_id, self.parent, self.start = run_id, trace_id, parent, start
        self.dotted_order: str | None = None


def dotted_orders(nodes: dict[str, Node], stored: dict[str, str | None], keep: dict | None = None) -> None:
    """Set each node's dotted_order from its parent: a node of ``nodes``, a stored run
    (``stored``: id -> dotted_order), or a stand-in for a parent not come yet (or what ``keep``
    has for the node then). Iterative (a chain of ten thousand spans in one request is no
    recursion), and a cycle of parents in a hostile request is cut where it closes. A dotted_order
    longer than the rule allows stays None, and so do its descendants'."""
    keep = keep or {}
    done: set[str] = set()
    for start in nodes.values():
        chain: list[Node] = []
        on_chain: set[str] = set()
        node: Node | None = start
        while node is not None and node.id not in done and node.id not in on_chain:
            chain.append(node)
            on_chain.add(node.id)
            node = nodes.get(node.parent) if node.parent is not None else None
        for node in reversed(chain):
            on_chain.discard(node.id)
            node.dotted_order = _order(node, nodes, stored, keep, on_chain)
            done.add(node.id)


def _order(node: Node, nodes: dict, stored: dict, keep: dict, pending: set) -> str | None:
    own = segment(node.start, node.id)
    if node.parent is None:
        return own
    parent = nodes.get(node.parent)
    if parent is not None and node.parent not in pending:
        base = parent.dotted_order
    elif node.parent in stored:
        base = stored[node.parent]
    elif node.id in keep:
        return keep[node.id]
    else:  # not come yet (or a cycle): a stand-in until it comes
        base = segment(node.start, node.parent)
    if base is None:
        return None
    order = f"{base}.{own}"
    return order if len(order) <= MAX_ORDER_CHARS else None


def lock_keys(tenant: str, trace_ids: Iterable[str]) -> list[int]:
    """pg_advisory_xact_lock keys for traces, sorted (so two requests lock in the same order)."""
    keys = set()
    for trace_id in trace_ids:
        digest = hashlib.blake2b(f"{tenant}/{trace_id}".encode(), digest_size=8).digest()
        keys.add(int.from_bytes(digest, "big", signed=True))
    return sorted(keys)


_WAITING = (
    "SELECT DISTINCT parent_run_id FROM runs WHERE tenant = %s AND trace_id = ANY(%s::uuid[])"
    " AND parent_run_id = ANY(%s::uuid[]) AND NOT id = ANY(%s::uuid[])"
)
_CURRENT = "SELECT id, dotted_order FROM runs WHERE tenant = %s AND id = ANY(%s::uuid[]) AND posted"
# Rows that are one of the request's runs get theirs; rows that hold "Z<id>." (descendants stored
# before it) get their part up to there replaced by it (37 = len("Z") + a UUID's 36).
_REPAIR = (
    "UPDATE runs AS r SET dotted_order = CASE WHEN r.id = n.id THEN n.dotted_order"
    " ELSE n.dotted_order"
    " || substr(r.dotted_order, strpos(r.dotted_order, 'Z' || n.id::text || '.') + 37) END"
    " FROM unnest(%s::uuid[], %s::uuid[], %s::text[]) AS n(id, trace_id, dotted_order)"
    " WHERE r.tenant = %s AND r.trace_id = n.trace_id AND r.posted"
    " AND (r.id = n.id OR strpos(r.dotted_order, 'Z' || n.id::text || '.') > 0)"
)


async def relink(db: Database, tenant: str, nodes: dict[str, Node], provisional: bool) -> int:
    """After the request's runs are committed: link them to parents stored since, and repair the
    dotted_order of their descendants stored before them. Returns the rows repaired."""
    if not nodes:
        return 0
    ids = list(nodes)
    traces = sorted({n.trace_id for n in nodes.values()})
    waiting = await db.fetch(_WAITING, (tenant, traces, ids, ids))
    if not waiting and not provisional:
        return 0
    async with db.transaction() as cur:
        await cur.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k ORDER BY k",
            (lock_keys(tenant, (n.trace_id for n in nodes.values())),),
        )
        await cur.execute(_WAITING, (tenant, traces, ids, ids))
        waiting_ids = {str(row[0]) for row in await cur.fetchall()}
        outside = {n.parent for n in nodes.values() if n.parent is not None and n.parent not in nodes}
        await cur.execute(_CURRENT, (tenant, ids + sorted(outside)))
        current = {str(run_id): order for run_id, order in await cur.fetchall()}
        fresh = {i: Node(n.id, n.trace_id, n.parent, n.start) for i, n in nodes.items()}
        # A run whose parent is still missing keeps what is stored: a stand-in, or a repair since.
        keep = {i: current[i] for i in fresh if i in current}
        dotted_orders(fresh, {p: current[p] for p in outside if p in current}, keep)
        repairs = [
            (run_id, node.trace_id, node.dotted_order)
            for run_id, node in fresh.items()
            if node.dotted_order is not None
            and (run_id in waiting_ids or node.dotted_order != current.get(run_id))
        ]
        if not repairs:
            return 0
        await cur.execute(
            _REPAIR,
            (
                [r[0] for r in repairs],
                [r[1] for r in repairs],
                [r[2] for r in repairs],
                tenant,
            ),
        )
        return cur.rowcount
