"""Alembic environment for the catalog; run through ``strongroom.catalog.migrate`` only.

The caller hands over an open connection inside a transaction, so there is no
alembic.ini and no engine configuration here: an installed wheel migrates as it is.
"""

from __future__ import annotations

from alembic import context

from strongroom.catalog.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("catalog migrations run through strongroom.catalog.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,  # for autogenerate when writing a new revision
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
