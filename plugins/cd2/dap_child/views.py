"""Keep the views analysts build on replica tables across the client's DDL and a re-init's swap.

Before a change that PostgreSQL would refuse while views depend on a table (the client's ``ALTER TABLE``
on a schema change, the ``DROP TABLE`` of a re-init's swap), :func:`save_and_drop` saves every view and
materialized view that depends on it, recursively, as the statements that recreate it (definition,
options, owner, grants, comments, a materialized view's indexes) into :data:`SAVED_VIEWS`, a table of
the product's own schema, then drops them. :func:`restore` recreates them in dependency order after the
change. Saving first, in the same transaction as the drop, means a process killed in between loses
nothing: the next run of the table restores what is still saved. A view that can no longer be created
(its column was dropped) stays saved, marked as needing a person, with PostgreSQL's error; it is named in
the table's result and notification on every run until someone fixes or deletes it.
"""

from __future__ import annotations

import logging

import asyncpg

from cd2.contract import PRODUCT_SCHEMA, TableRef
from cd2.dap_child import locks
from cd2.dap_child.quoting import GRANTEE_SQL, qualified, quote_ident

logger = logging.getLogger(__name__)

SAVED_VIEWS = qualified(PRODUCT_SCHEMA, "saved_views")
PENDING = "pending"
NEEDS_PERSON = "needs_person"

_CREATE_SAVED_VIEWS = f"""
CREATE SCHEMA IF NOT EXISTS {quote_ident(PRODUCT_SCHEMA)};
CREATE TABLE IF NOT EXISTS {SAVED_VIEWS} (
    view_schema text NOT NULL,
    view_name text NOT NULL,
    table_label text NOT NULL,
    depth integer NOT NULL,
    statements text[] NOT NULL,
    status text NOT NULL,
    error text,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (view_schema, view_name)
)
"""

# Views (v) and materialized views (m) depending on the given relations, recursively; depth is the
# longest path from a table, so creating by ascending depth creates every view after what it reads.
_DEPENDENTS = """
WITH RECURSIVE dependents(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = ANY($1::oid[]) AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, dependents.depth + 1
    FROM dependents
    JOIN pg_depend d ON d.refobjid = dependents.oid AND d.refclassid = 'pg_class'::regclass
                    AND d.classid = 'pg_rewrite'::regclass
    JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> dependents.oid
)
SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind, max(dependents.depth) AS depth,
       pg_get_viewdef(c.oid) AS definition, c.reloptions, pg_get_userbyid(c.relowner) AS owner,
       obj_description(c.oid, 'pg_class') AS comment
FROM dependents JOIN pg_class c ON c.oid = dependents.oid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm')
GROUP BY c.oid, n.nspname, c.relname, c.relkind
ORDER BY depth, n.nspname, c.relname
"""

_GRANTS = f"""
SELECT {GRANTEE_SQL} AS grantee,
       a.privilege_type, a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = $1 AND a.grantee <> c.relowner
ORDER BY 1, 2
"""

_COLUMN_COMMENTS = """
SELECT a.attname, col_description(a.attrelid, a.attnum) AS comment
FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
  AND col_description(a.attrelid, a.attnum) IS NOT NULL
ORDER BY a.attnum
"""


async def ensure_table(conn: asyncpg.Connection) -> None:
    """Create :data:`SAVED_VIEWS` if missing; every child does, before any other function here runs."""
    await locks.shared_ddl(conn, _CREATE_SAVED_VIEWS)


async def _statements(conn: asyncpg.Connection, view: asyncpg.Record) -> list[str]:
    """What recreates ``view`` as it is now (run with ``search_path`` = ``pg_catalog``)."""
    name = qualified(view["nspname"], view["relname"])
    materialized = view["relkind"] == "m"
    kind = "MATERIALIZED VIEW" if materialized else "VIEW"
    options = f" WITH ({', '.join(view['reloptions'])})" if view["reloptions"] else ""
    definition = view["definition"].rstrip().rstrip(";")
    statements = [
        f"CREATE {kind} {name}{options} AS {definition}" + (" WITH DATA" if materialized else ""),
        f"ALTER {kind} {name} OWNER TO {quote_ident(view['owner'])}",
    ]
    for grant in await conn.fetch(_GRANTS, view["oid"]):
        option = " WITH GRANT OPTION" if grant["is_grantable"] else ""
        statements.append(f"GRANT {grant['privilege_type']} ON {name} TO {grant['grantee']}{option}")
    if view["comment"] is not None:
        statements.append(f"COMMENT ON {kind} {name} IS {_literal(view['comment'])}")
    for column in await conn.fetch(_COLUMN_COMMENTS, view["oid"]):
        statements.append(
            f"COMMENT ON COLUMN {name}.{quote_ident(column['attname'])} IS {_literal(column['comment'])}"
        )
    if materialized:
        indexes = await conn.fetch(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1", view["oid"]
        )
        statements += [row[0] for row in indexes]
    return statements


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def dependents(conn: asyncpg.Connection, oids: list[int]) -> list[tuple[int, str]]:
    """The views and materialized views depending on the relations ``oids``, recursively: (oid, name)."""
    found = await conn.fetch(_DEPENDENTS, oids) if oids else []
    return [(r["oid"], qualified(r["nspname"], r["relname"])) for r in found]


async def save_and_drop(conn: asyncpg.Connection, ref: TableRef, tables: list[str]) -> list[str]:
    """Save and drop every view depending on ``tables`` (qualified names); returns the views' names.

    Runs in the caller's transaction if there is one, else in its own.
    """
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO pg_catalog")
        oids = [oid for t in tables if (oid := await conn.fetchval("SELECT to_regclass($1)::oid", t))]
        found = await conn.fetch(_DEPENDENTS, oids) if oids else []
        if not found:
            return []
        for view in found:
            await conn.execute(
                f"INSERT INTO {SAVED_VIEWS} (view_schema, view_name, table_label, depth, statements, status) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (view_schema, view_name) DO UPDATE SET "
                "table_label = EXCLUDED.table_label, depth = EXCLUDED.depth, statements = EXCLUDED.statements, "
                "status = EXCLUDED.status, error = NULL, saved_at = now()",
                view["nspname"],
                view["relname"],
                ref.label,
                view["depth"],
                await _statements(conn, view),
                PENDING,
            )
        for view in reversed(found):
            kind = "MATERIALIZED VIEW" if view["relkind"] == "m" else "VIEW"
            await conn.execute(f"DROP {kind} {qualified(view['nspname'], view['relname'])}")
    names = [f"{v['nspname']}.{v['relname']}" for v in found]
    logger.info("%s: saved and dropped %d dependent view(s): %s", ref.label, len(names), ", ".join(names))
    return names


async def restore(conn: asyncpg.Connection, ref: TableRef) -> list[str]:
    """Recreate ``ref``'s saved views in dependency order; return the views needing a person.

    A view that fails stays saved with its error (its dependents then fail too, and stay saved).
    """
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO pg_catalog")
        saved = await conn.fetch(
            f"SELECT view_schema, view_name, statements FROM {SAVED_VIEWS} "
            "WHERE table_label = $1 AND status = $2 ORDER BY depth, view_schema, view_name",
            ref.label,
            PENDING,
        )
        for view in saved:
            label = f"{view['view_schema']}.{view['view_name']}"
            try:
                async with conn.transaction():
                    for statement in view["statements"]:
                        await conn.execute(statement)
            except asyncpg.PostgresError as error:
                logger.warning(
                    "%s: view %s cannot be recreated, kept for a person: %s", ref.label, label, error
                )
                await conn.execute(
                    f"UPDATE {SAVED_VIEWS} SET status = $3, error = $4 WHERE view_schema = $1 AND view_name = $2",
                    view["view_schema"],
                    view["view_name"],
                    NEEDS_PERSON,
                    describe(error),
                )
                continue
            await conn.execute(
                f"DELETE FROM {SAVED_VIEWS} WHERE view_schema = $1 AND view_name = $2",
                view["view_schema"],
                view["view_name"],
            )
            logger.info("%s: recreated view %s", ref.label, label)
    return await needing_person(conn, ref)


async def needing_person(conn: asyncpg.Connection, ref: TableRef) -> list[str]:
    """The views on ``ref`` that could not be recreated: ``schema.view: why``."""
    rows = await conn.fetch(
        f"SELECT view_schema, view_name, error FROM {SAVED_VIEWS} WHERE table_label = $1 AND status = $2 "
        "ORDER BY view_schema, view_name",
        ref.label,
        NEEDS_PERSON,
    )
    return [f"{r['view_schema']}.{r['view_name']} (saved in {SAVED_VIEWS}: {r['error']})" for r in rows]


def describe(error: asyncpg.PostgresError) -> str:
    parts = [error.args[0] if error.args else str(error)]
    if getattr(error, "detail", None):
        parts.append(f"DETAIL: {error.detail}")
    if getattr(error, "hint", None):
        parts.append(f"HINT: {error.hint}")
    return "; ".join(parts)
