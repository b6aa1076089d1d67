//! The SQLite schema and the conversions between Rust and SQL values.

use rusqlite::Connection;

use crate::config::SyncMode;

/// Schema version kept in `PRAGMA user_version`. 2 added `identities.push_url`.
pub(super) const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
    identity       BLOB PRIMARY KEY,
    public_key     BLOB NOT NULL UNIQUE,
    created_at     INTEGER NOT NULL,
    device_cookie  BLOB,
    cookie_changed INTEGER NOT NULL DEFAULT 0,
    -- The URL that wakes the identity's device group (docs/chat-server.md, Push).
    push_url       TEXT
);
-- One row per queued message; seq is assigned by the storage worker in commit order. Keyed by
-- (receiver, seq) without a rowid: a receiver's queue is one range of the table, and storing or
-- removing a message touches a single b-tree.
CREATE TABLE IF NOT EXISTS queue (
    receiver   BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    sender     BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    flags      INTEGER NOT NULL,
    expires_at INTEGER,
    body       BLOB NOT NULL,
    PRIMARY KEY (receiver, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_by_expiry ON queue (expires_at) WHERE expires_at IS NOT NULL;
-- (receiver, sender, message id) of every message accepted within the dedupe window, so that a
-- resend after a lost ack is acked again instead of queued twice.
CREATE TABLE IF NOT EXISTS seen (
    receiver   BLOB NOT NULL,
    sender     BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (receiver, sender, message_id)
) WITHOUT ROWID;
";

/// Opens (or creates) the database with WAL and the chosen sync mode, and creates the schema.
pub(super) fn open(path: &std::path::Path, sync: SyncMode) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync.pragma())?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.execute_batch(SCHEMA)?;
    // A database of schema 1 has `identities` without the column (CREATE TABLE IF NOT EXISTS
    // left it as it was).
    let has_push_url: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('identities') WHERE name = 'push_url'",
        [],
        |row| row.get(0),
    )?;
    if has_push_url == 0 {
        conn.execute_batch("ALTER TABLE identities ADD COLUMN push_url TEXT")?;
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

/// A u64 (message ids, sequence numbers, times) in SQLite's signed 64-bit integer, bit for bit.
#[must_use]
pub const fn to_sql(value: u64) -> i64 {
    i64::from_le_bytes(value.to_le_bytes())
}

/// The inverse of [`to_sql`].
#[must_use]
pub const fn from_sql(value: i64) -> u64 {
    u64::from_le_bytes(value.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_round_trips_through_sql_integers() {
        for v in [0, 1, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef] {
            assert_eq!(from_sql(to_sql(v)), v);
        }
        assert_eq!(to_sql(u64::MAX), -1);
    }

    #[test]
    fn schema_is_idempotent_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        drop(open(&path, SyncMode::Full).unwrap());
        let conn = open(&path, SyncMode::Normal).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL is 1");
    }
}
