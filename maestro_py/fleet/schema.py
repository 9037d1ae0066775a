"""The governor store's tables, the same for SQLite and PostgreSQL: limits, reservations (one per live run, with
its lease) and charges (one per settled run, idempotent by run id)."""

# The same schema for both: timestamps are epoch seconds, amounts floats, flags integers.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS maestro_limits (
        scope TEXT NOT NULL, period TEXT NOT NULL, tokens BIGINT, usd DOUBLE PRECISION, tz TEXT,
        PRIMARY KEY (scope, period))""",
    """CREATE TABLE IF NOT EXISTS maestro_reservations (
        run_id TEXT PRIMARY KEY, agent TEXT NOT NULL, cadence TEXT NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, tick TEXT NOT NULL, tokens DOUBLE PRECISION NOT NULL, usd DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS maestro_charges (
        run_id TEXT PRIMARY KEY, agent TEXT NOT NULL, cadence TEXT NOT NULL, host TEXT NOT NULL, tick TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL, tokens DOUBLE PRECISION NOT NULL, usd DOUBLE PRECISION NOT NULL,
        measured INTEGER NOT NULL, source TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS maestro_charges_ts ON maestro_charges (ts)",
)
