"""The tables as migration 1 created them, frozen in SQLAlchemy Core.

`models.py` declares the schema for readers (sqlmodel classes); a migration must never change once
shipped, so it creates what was true when it shipped, not whatever the models say today. A test
keeps the two identical until a later migration changes the models. Core tables also spare every
run's start-up the ORM's import (sqlmodel loads `sqlalchemy.orm`: ~0.4 s on a slow machine).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Integer, MetaData, String, Table

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False, index=True),
    Column("kind", String, nullable=False),
    Column("parent_id", String),
    Column("created", Float, nullable=False),
    Column("config", String, nullable=False),
    Column("config_hash", String, nullable=False),
    Column("status", String, nullable=False),
    Column("last_seq", Integer, nullable=False),
    Column("head_hash", String, nullable=False),
    Column("owner", String),
    Column("heartbeat", Float),
)

events = Table(
    "events", metadata,
    Column("run_id", String, ForeignKey("runs.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("type", String, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("payload", String, nullable=False),
    Column("ts", Float, nullable=False),
    Column("hash", String, nullable=False),
)

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String, nullable=False),
    Column("applied_at", Float, nullable=False),
)
