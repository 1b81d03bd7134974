"""The ledger's DuckDB schema: the `requests` table and the report views."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "VARCHAR"),
    ("ts", "TIMESTAMPTZ"),
    ("provider", "VARCHAR"),
    ("endpoint", "VARCHAR"),
    ("model", "VARCHAR"),
    ("price_model", "VARCHAR"),
    ("response_model", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("team", "VARCHAR"),
    ("key_alias", "VARCHAR"),
    ("key_fingerprint", "VARCHAR"),
    ("tags", "VARCHAR[]"),
    ("session", "VARCHAR"),
    ("agent", "VARCHAR"),
    ("streamed", "BOOLEAN"),
    ("status", "INTEGER"),
    ("outcome", "VARCHAR"),
    ("reason", "VARCHAR"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("cache_read_tokens", "BIGINT"),
    ("cache_write_5m_tokens", "BIGINT"),
    ("cache_write_1h_tokens", "BIGINT"),
    ("reasoning_tokens", "BIGINT"),
    ("web_search_requests", "BIGINT"),
    ("cost_usd", "DECIMAL(20,10)"),
    ("usage_estimated", "BOOLEAN"),
    ("latency_ms", "INTEGER"),
    ("ttft_ms", "INTEGER"),
)
NAMES = tuple(name for name, _ in COLUMNS)

_TOTALS = """
    count(*) AS calls,
    count(*) FILTER (WHERE outcome = 'blocked') AS blocked,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_usd) AS cost_usd"""

VIEWS = {
    "spend_by_user": f"SELECT user_id, team, {_TOTALS} FROM requests"
    " GROUP BY ALL ORDER BY cost_usd DESC",
    "spend_by_team": f"SELECT team, {_TOTALS} FROM requests"
    " GROUP BY ALL ORDER BY cost_usd DESC",
    "spend_by_model": f"SELECT provider, price_model, {_TOTALS} FROM requests"
    " GROUP BY ALL ORDER BY cost_usd DESC",
    # A call counts under each of its tags; one without tags under a NULL tag.
    "spend_by_tag": f"SELECT tag, {_TOTALS} FROM"
    " (SELECT *, unnest(CASE WHEN len(coalesce(tags, [])) = 0"
    " THEN [NULL::VARCHAR] ELSE tags END) AS tag FROM requests)"
    " GROUP BY tag ORDER BY cost_usd DESC",
    "spend_daily": f"SELECT CAST(timezone('UTC', ts) AS DATE) AS day, {_TOTALS}"
    " FROM requests GROUP BY ALL ORDER BY day",
    "spend_by_session": f"SELECT session, agent, user_id, min(ts) AS started,"
    f" max(ts) AS last_call, {_TOTALS} FROM requests"
    " GROUP BY session, agent, user_id ORDER BY cost_usd DESC",
    "spend_by_key": f"SELECT key_alias, key_fingerprint, user_id, {_TOTALS}"
    " FROM requests GROUP BY ALL ORDER BY cost_usd DESC",
}


def create_statements() -> list[str]:
    """DDL that makes (or completes) a ledger; safe to run on every start."""
    columns = ",\n    ".join(f"{name} {kind}" for name, kind in COLUMNS)
    statements = [
        # No primary key: DuckDB would load its whole index on every batch, which
        # grows with the ledger. `insert_statement` skips ids already stored.
        f"CREATE TABLE IF NOT EXISTS requests (\n    {columns}\n)"
    ]
    statements += [f"CREATE OR REPLACE VIEW {n} AS {sql}" for n, sql in VIEWS.items()]
    return statements


def insert_statement() -> str:
    """Column-wise insert: one list parameter per column, unnested in step.

    The last parameter is the batch's earliest `ts`: a row whose id is stored
    already (a journal replayed after a crash) is skipped, and only rows from that
    moment on are searched, so the cost does not grow with the ledger.
    """
    selects = ", ".join(
        f"CAST(unnest(${i + 1}) AS {kind}) AS {name}"
        for i, (name, kind) in enumerate(COLUMNS)
    )
    since = f"CAST(${len(COLUMNS) + 1} AS TIMESTAMPTZ)"
    return (
        f"INSERT INTO requests ({', '.join(NAMES)}) SELECT * FROM (SELECT {selects})"
        " AS batch WHERE batch.id NOT IN"
        f" (SELECT id FROM requests WHERE {since} IS NULL OR ts >= {since})"
    )
