"""Query-plan hints: keep SQLite, which usually has no statistics, on the right index."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class unindexed(FunctionElement[Any]):
    """A column whose index must not drive the query (SQLite ``+column``).

    Without ANALYZE statistics SQLite prefers an equality on any indexed column; for
    ``find --client C`` that means walking every row of the client's snapshots instead
    of the few rows of one name. Elsewhere it renders as the plain column.
    """

    name = "unindexed"
    inherit_cache = True

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed)
def _plain(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _unary_plus(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))
