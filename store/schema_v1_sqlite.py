"""Migration 1's tables as SQLite DDL, frozen: what SQLAlchemy Core compiles `schema_v1.py` to for
SQLite, written out so a new store file is created without importing SQLAlchemy (`store/lite.py`).
`IF NOT EXISTS` is Core's `checkfirst`. tests/test_store.py keeps this equal to the compiled Core."""

RUNS = """CREATE TABLE IF NOT EXISTS runs (
\tid VARCHAR NOT NULL, 
\tname VARCHAR NOT NULL, 
\tkind VARCHAR NOT NULL, 
\tparent_id VARCHAR, 
\tcreated FLOAT NOT NULL, 
\tconfig VARCHAR NOT NULL, 
\tconfig_hash VARCHAR NOT NULL, 
\tstatus VARCHAR NOT NULL, 
\tlast_seq INTEGER NOT NULL, 
\thead_hash VARCHAR NOT NULL, 
\towner VARCHAR, 
\theartbeat FLOAT, 
\tPRIMARY KEY (id)
)"""

RUNS_NAME_INDEX = "CREATE INDEX IF NOT EXISTS ix_runs_name ON runs (name)"

EVENTS = """CREATE TABLE IF NOT EXISTS events (
\trun_id VARCHAR NOT NULL, 
\tseq INTEGER NOT NULL, 
\ttype VARCHAR NOT NULL, 
\tschema_version INTEGER NOT NULL, 
\tpayload VARCHAR NOT NULL, 
\tts FLOAT NOT NULL, 
\thash VARCHAR NOT NULL, 
\tPRIMARY KEY (run_id, seq), 
\tFOREIGN KEY(run_id) REFERENCES runs (id)
)"""

SCHEMA_MIGRATIONS = """CREATE TABLE IF NOT EXISTS schema_migrations (
\tversion INTEGER NOT NULL, 
\tname VARCHAR NOT NULL, 
\tapplied_at FLOAT NOT NULL, 
\tPRIMARY KEY (version)
)"""

RUNS_AND_EVENTS = (RUNS, RUNS_NAME_INDEX, EVENTS)
