"""The three scopes a filter applies to, as WHERE conditions over the listed run ``r``:

- ``filter``: the run itself;
- ``trace_filter``: the root run of its trace (the run whose id is the trace's id);
- ``tree_filter``: some run of its trace, itself included.

The last two are EXISTS subqueries through the primary key and the (tenant, trace_id) index, so
each costs one index probe per candidate run. ``search()`` reads text that no index holds, so a
filter using it must come with a scope that bounds the rows (a project, a trace or ids: see
``bounded``), and every filtered read runs under QUERY_TIMEOUT_MS.
"""

from __future__ import annotations

from handler.base.errors import RunError
from handler.query.compile import Node, check, has_search, where

SCOPES = ("filter", "trace_filter", "tree_filter")
_TRACE = "EXISTS (SELECT 1 FROM runs t WHERE t.tenant = r.tenant AND t.id = r.trace_id AND t.posted AND {})"
_TREE = (
    "EXISTS (SELECT 1 FROM runs t WHERE t.tenant = r.tenant AND t.trace_id = r.trace_id AND t.posted AND {})"
)


class Filters:
    """The filters of one request, checked: ``clauses`` and ``params`` to AND into its WHERE."""

    def __init__(self, texts: dict[str, object], query: object = None) -> None:
        self.clauses: list[str] = []
        self.params: list = []
        self.trees: list[Node] = []
        for scope in SCOPES:
            text = texts.get(scope)
            if text is None:
                continue
            try:
                tree = check(text)
            except RunError as e:
                raise RunError(400, f"{scope}: {e.reason.removeprefix('filter: ')}") from None
            sql, params = where(tree, "r" if scope == "filter" else "t")
            self.clauses.append(
                sql if scope == "filter" else (_TRACE if scope == "trace_filter" else _TREE).format(sql)
            )
            self.params.extend(params)
            self.trees.append(tree)
        if query is not None:  # the SDK's ``query``: free text
            if not isinstance(query, str) or not query.strip() or len(query) > 1000:
                raise RunError(400, "query must be a string of 1 to 1000 characters")
            tree = Node("search", value=query)
            sql, params = where(tree)
            self.clauses.append(sql)
            self.params.extend(params)
            self.trees.append(tree)

    @property
    def searching(self) -> bool:
        return any(has_search(tree) for tree in self.trees)

    def bounded(self, scoped: bool) -> None:
        """search() reads every candidate row's text: it needs a project, a trace or ids."""
        if self.searching and not scoped:
            raise RunError(
                400,
                "search() and query need a project (session / project_ids), a trace or run ids to look in",
            )

    def __bool__(self) -> bool:
        return bool(self.clauses)
