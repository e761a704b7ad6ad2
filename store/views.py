"""SQL views for browsing a store with datasette, sqlite-utils, psql or any SQL client.

- `samples`: the accepted dataset, one row per accepted sample (what `export` writes);
- `queries`: one row per teacher query: who asked what, how it ended, what it cost;
- `charges`: every amount the budget counts as spent: a settled query's actual cost, and the worst
  case of an attempt whose outcome is unknown (failed after it may have been billed, or in flight
  when its process died and the run was resumed), exactly as the ledger folds them;
- `spend_by_run`: those charges summed per run.

Times are ISO-8601 UTC to the millisecond (`iso_ms` renders `events` output the same way); usd is
rounded to USD_DECIMALS places, finer than any price per million tokens can make a cost. The same
views are written for SQLite and PostgreSQL from one template, so both answer the same rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

USD_DECIMALS = 10
VIEWS = ("samples", "charges", "queries", "spend_by_run")  # in dependency order
QUERY_EVENTS = "'query_reserved', 'query_dispatched', 'attempt_failed', 'query_settled', 'query_abandoned'"


class _Dialect:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def doc(self, alias: str) -> str:
        return f"{alias}.payload::jsonb" if self.pg else f"{alias}.payload"

    def text(self, alias: str, *path: str) -> str:
        if self.pg:
            return f"({self.doc(alias)} #>> '{{{','.join(path)}}}')"
        return f"json_extract({alias}.payload, '$.{'.'.join(path)}')"

    def int(self, alias: str, *path: str) -> str:
        return f"CAST({self.text(alias, *path)} AS BIGINT)" if self.pg else self.text(alias, *path)

    def num(self, alias: str, *path: str) -> str:
        return f"CAST({self.text(alias, *path)} AS DOUBLE PRECISION)" if self.pg else self.text(alias, *path)

    def true(self, alias: str, *path: str) -> str:
        return f"COALESCE(CAST({self.text(alias, *path)} AS BOOLEAN), FALSE)" if self.pg \
            else f"COALESCE({self.text(alias, *path)}, 0) = 1"

    def iso(self, ts: str) -> str:
        ms = f"CAST(floor({ts} * 1000) AS BIGINT)" if self.pg else f"CAST({ts} * 1000 AS INTEGER)"
        if self.pg:
            return (f"(to_char(to_timestamp({ms} / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') "
                    f"|| '.' || lpad(CAST(mod({ms}, 1000) AS TEXT), 3, '0') || 'Z')")
        return f"(strftime('%Y-%m-%dT%H:%M:%S', {ms} / 1000, 'unixepoch') || '.' || printf('%03d', {ms} % 1000) || 'Z')"

    def usd(self, expr: str) -> str:
        return f"round(CAST({expr} AS NUMERIC), {USD_DECIMALS})" if self.pg else f"round({expr}, {USD_DECIMALS})"


def _query_events(d: _Dialect) -> str:
    """Every query event with its query id, the seq of the reservation in force, and the next event."""
    return f"""q AS (
  SELECT e.run_id, e.seq, e.type, e.ts, e.payload, {d.text('e', 'query_id')} AS query_id
  FROM events e WHERE e.type IN ({QUERY_EVENTS})
), qw AS (
  SELECT q.*,
    max(CASE WHEN type = 'query_reserved' THEN seq END) OVER (PARTITION BY run_id, query_id ORDER BY seq
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS reserved_seq,
    lead(seq) OVER (PARTITION BY run_id, query_id ORDER BY seq) AS next_seq
  FROM q
)"""


def _amount(d: _Dialect, alias: str, key: str) -> str:
    return (f"{d.int(alias, key, 'queries')} AS queries, {d.int(alias, key, 'input_tokens')} AS input_tokens, "
            f"{d.int(alias, key, 'output_tokens')} AS output_tokens, {d.num(alias, key, 'usd')} AS usd")


def charges_sql(d: _Dialect) -> str:
    # A maybe-billed failure spends the reservation it ends (once); a dispatch still open when the
    # run is next resumed spends its reservation then. Mirrors Ledger._on_failed / _on_resumed.
    return f"""CREATE VIEW charges AS
WITH {_query_events(d)}, billed AS (
  SELECT qw.*, row_number() OVER (PARTITION BY run_id, query_id, reserved_seq ORDER BY seq) AS nth
  FROM qw WHERE type = 'attempt_failed' AND {d.true('qw', 'maybe_billed')}
), open_at_resume AS (
  SELECT qw.*, (SELECT min(r.seq) FROM events r WHERE r.run_id = qw.run_id AND r.type = 'run_resumed'
                AND r.seq > qw.seq) AS resumed_seq
  FROM qw WHERE type = 'query_dispatched'
)
SELECT s.run_id, s.query_id, s.seq, 'settled' AS kind, {d.iso('s.ts')} AS at, {_amount(d, 's', 'actual')}
FROM qw s WHERE s.type = 'query_settled'
UNION ALL
SELECT b.run_id, b.query_id, b.seq, 'maybe_billed', {d.iso('b.ts')}, {_amount(d, 'rv', 'worst')}
FROM billed b JOIN events rv ON rv.run_id = b.run_id AND rv.seq = b.reserved_seq WHERE b.nth = 1
UNION ALL
SELECT o.run_id, o.query_id, o.resumed_seq, 'interrupted', {d.iso('rr.ts')}, {_amount(d, 'rv', 'worst')}
FROM open_at_resume o JOIN events rv ON rv.run_id = o.run_id AND rv.seq = o.reserved_seq
JOIN events rr ON rr.run_id = o.run_id AND rr.seq = o.resumed_seq
WHERE o.resumed_seq IS NOT NULL AND (o.next_seq IS NULL OR o.next_seq > o.resumed_seq)"""


def queries_sql(d: _Dialect) -> str:
    return f"""CREATE VIEW queries AS
WITH {_query_events(d)}, per_query AS (
  SELECT run_id, query_id, min(CASE WHEN type = 'query_reserved' THEN seq END) AS first_seq,
    sum(CASE WHEN type = 'query_dispatched' THEN 1 ELSE 0 END) AS attempts,
    sum(CASE WHEN type = 'attempt_failed' THEN 1 ELSE 0 END) AS failed_attempts,
    max(CASE WHEN type = 'query_settled' THEN seq END) AS settled_seq,
    max(CASE WHEN type = 'query_abandoned' THEN seq END) AS abandoned_seq
  FROM qw GROUP BY run_id, query_id
), spent AS (
  SELECT run_id, query_id, sum(queries) AS queries, sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens, sum(usd) AS usd
  FROM charges GROUP BY run_id, query_id
)
SELECT p.run_id, r.name AS run_name, p.query_id, {d.text('f', 'role')} AS role,
  {d.text('f', 'purpose')} AS purpose, {d.text('f', 'strategy')} AS strategy, {d.text('f', 'item')} AS item,
  {d.text('f', 'provider')} AS provider, {d.text('f', 'model')} AS model,
  CASE WHEN p.settled_seq IS NOT NULL THEN 'settled' WHEN p.abandoned_seq IS NOT NULL THEN 'abandoned'
       ELSE 'open' END AS status,
  CAST(p.attempts AS BIGINT) AS attempts, CAST(p.failed_attempts AS BIGINT) AS failed_attempts,
  {d.iso('f.ts')} AS reserved_at, {d.iso('se.ts')} AS settled_at,
  CAST(COALESCE(c.queries, 0) AS BIGINT) AS queries, CAST(COALESCE(c.input_tokens, 0) AS BIGINT) AS input_tokens,
  CAST(COALESCE(c.output_tokens, 0) AS BIGINT) AS output_tokens, {d.usd('COALESCE(c.usd, 0)')} AS usd,
  {d.text('se', 'finish_reason')} AS finish_reason, {d.num('se', 'latency_s')} AS latency_s,
  {d.text('se', 'text')} AS answer
FROM per_query p JOIN events f ON f.run_id = p.run_id AND f.seq = p.first_seq
JOIN runs r ON r.id = p.run_id
LEFT JOIN events se ON se.run_id = p.run_id AND se.seq = p.settled_seq
LEFT JOIN spent c ON c.run_id = p.run_id AND c.query_id = p.query_id"""


def samples_sql(d: _Dialect) -> str:
    # An acceptance takes the sample's proposal right before it, unless a decision came between:
    # the rows `export` writes (engine.dataset.accepted_rows).
    return f"""CREATE VIEW samples AS
WITH s AS (
  SELECT e.run_id, e.seq, e.type, e.ts, e.payload, {d.text('e', 'sample_id')} AS sample_id
  FROM events e WHERE e.type IN ('sample_proposed', 'sample_accepted', 'sample_rejected')
), w AS (
  SELECT s.*, lag(type) OVER win AS prev_type, lag(seq) OVER win AS prev_seq
  FROM s WHERE sample_id IS NOT NULL
  WINDOW win AS (PARTITION BY run_id, sample_id ORDER BY seq)
)
SELECT a.run_id, r.name AS run_name, a.sample_id, {d.text('p', 'seed_id')} AS seed_id,
  {d.text('p', 'strategy')} AS strategy, {d.text('p', 'question')} AS question, {d.text('p', 'answer')} AS answer,
  {d.text('p', 'reference')} AS reference, {d.text('p', 'models', 'teacher')} AS model,
  {d.text('a', 'reason')} AS verification, {d.iso('a.ts')} AS accepted_at, a.seq AS seq
FROM w a JOIN events p ON p.run_id = a.run_id AND p.seq = a.prev_seq
JOIN runs r ON r.id = a.run_id
WHERE a.type = 'sample_accepted' AND a.prev_type = 'sample_proposed'"""


def spend_by_run_sql(d: _Dialect) -> str:
    return f"""CREATE VIEW spend_by_run AS
SELECT r.id AS run_id, r.name AS run_name, r.kind, r.status, {d.iso('r.created')} AS created_at,
  r.last_seq AS events,
  CAST(COALESCE(sum(c.queries), 0) AS BIGINT) AS queries,
  CAST(COALESCE(sum(c.input_tokens), 0) AS BIGINT) AS input_tokens,
  CAST(COALESCE(sum(c.output_tokens), 0) AS BIGINT) AS output_tokens,
  {d.usd('COALESCE(sum(c.usd), 0)')} AS usd,
  CAST(sum(CASE WHEN c.kind = 'settled' THEN 1 ELSE 0 END) AS BIGINT) AS settled_queries,
  CAST(sum(CASE WHEN c.kind <> 'settled' THEN 1 ELSE 0 END) AS BIGINT) AS charged_unsettled
FROM runs r LEFT JOIN charges c ON c.run_id = r.id
GROUP BY r.id, r.name, r.kind, r.status, r.created, r.last_seq"""


def create_views(conn: Connection) -> None:
    """Migration 2. Other dialects get no views (the store works without them)."""
    if conn.dialect.name not in ("sqlite", "postgresql"):
        return
    d = _Dialect(conn.dialect.name)
    for name in reversed(VIEWS):
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
    for build in (samples_sql, charges_sql, queries_sql, spend_by_run_sql):  # VIEWS' order
        conn.exec_driver_sql(build(d))
