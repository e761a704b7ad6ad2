"""Tables of the event store. `runs` caches what listing needs; `events` is the source of truth."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    kind: str = "generate"
    parent_id: str | None = None
    created: float
    config: str  # canonical JSON snapshot, secrets removed
    config_hash: str
    status: str = "running"
    last_seq: int = 0
    head_hash: str = ""
    owner: str | None = None  # "host:pid:token" of the process allowed to append
    heartbeat: float | None = None


class EventRow(SQLModel, table=True):
    __tablename__ = "events"

    run_id: str = Field(primary_key=True, foreign_key="runs.id")
    seq: int = Field(primary_key=True)
    type: str
    schema_version: int
    payload: str  # canonical JSON (sorted keys)
    ts: float
    hash: str


class MigrationRow(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    version: int = Field(primary_key=True)
    name: str
    applied_at: float
