"""Alembic environment: runs against the engine (and, to autogenerate, the metadata of every
table, ``pacs.schema.metadata``) handed over in ``config.attributes``."""

from alembic import context

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=config.attributes.get("metadata"),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
