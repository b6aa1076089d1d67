//! The device group's SQLite schema (Durable Object SQL storage), created idempotently when the
//! object starts.

use serde::{Deserialize, Serialize};
use worker::{SqlStorage, SqlStorageValue};

/// Statements run on every start; each must be idempotent.
const SCHEMA: &[&str] =
    &["CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"];

/// Counter of accepted device WebSockets.
pub(crate) const CONNECTIONS_ACCEPTED: &str = "connections_accepted";
/// Counter of echoed frames (skeleton behaviour).
pub(crate) const FRAMES_ECHOED: &str = "frames_echoed";

/// Creates the tables that are missing.
pub(crate) fn create(sql: &SqlStorage) -> worker::Result<()> {
    for statement in SCHEMA {
        sql.exec(statement, None)?;
    }
    Ok(())
}

/// Adds one to a counter, creating it at 1.
pub(crate) fn increment(sql: &SqlStorage, counter: &str) -> worker::Result<()> {
    sql.exec(
        "INSERT INTO counters (name, value) VALUES (?, 1) \
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
        vec![SqlStorageValue::from(counter.to_owned())],
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct CounterRow {
    name: String,
    value: i64,
}

/// What the development inspection route reports about a group.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Stats {
    pub(crate) connections_accepted: i64,
    pub(crate) frames_echoed: i64,
    /// Device WebSockets open right now (memory, not storage).
    pub(crate) open_connections: usize,
}

/// Reads the counters.
pub(crate) fn read_stats(sql: &SqlStorage) -> worker::Result<Stats> {
    let rows: Vec<CounterRow> = sql
        .exec("SELECT name, value FROM counters", None)?
        .to_array()?;
    let mut stats = Stats::default();
    for row in rows {
        match row.name.as_str() {
            CONNECTIONS_ACCEPTED => stats.connections_accepted = row.value,
            FRAMES_ECHOED => stats.frames_echoed = row.value,
            _ => {}
        }
    }
    Ok(stats)
}
