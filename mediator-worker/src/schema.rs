//! The device group's SQLite schema (Durable Object SQL storage), created idempotently when the
//! object starts. The group tables are `docs/mediator.md`'s; `meta` is the object's own.

use tandem_shared::crypto::PublicKey;
use worker::{SqlStorage, SqlStorageValue};

/// Statements run on every start; each must be idempotent.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS slot (
       device_id             INTEGER PRIMARY KEY,
       expiration_policy     INTEGER NOT NULL,
       encrypted_device_info BLOB    NOT NULL,
       last_connected_at     INTEGER NOT NULL,
       last_disconnected_at  INTEGER,
       next_seq              INTEGER NOT NULL DEFAULT 1
     )",
    "CREATE TABLE IF NOT EXISTS envelope (
       id        INTEGER PRIMARY KEY,
       body      BLOB    NOT NULL,
       stored_at INTEGER NOT NULL,
       refs      INTEGER NOT NULL
     )",
    "CREATE TABLE IF NOT EXISTS queue (
       device_id   INTEGER NOT NULL,
       seq         INTEGER NOT NULL,
       envelope_id INTEGER NOT NULL,
       PRIMARY KEY (device_id, seq)
     ) WITHOUT ROWID",
    // A queue entry removed releases its body: the reference count goes down and the body goes
    // with the last entry. Inside SQLite this costs a fraction of one more statement through
    // the runtime's `exec`, which is what an ack batch would otherwise pay per entry
    // (docs/worker.md "Where the time goes").
    "CREATE TRIGGER IF NOT EXISTS queue_release AFTER DELETE ON queue BEGIN
       UPDATE envelope SET refs = refs - 1 WHERE id = OLD.envelope_id;
       DELETE FROM envelope WHERE id = OLD.envelope_id AND refs <= 0;
     END",
    "CREATE TABLE IF NOT EXISTS staged (
       position  INTEGER PRIMARY KEY,
       body      BLOB    NOT NULL,
       stored_at INTEGER NOT NULL
     )",
    "CREATE TABLE IF NOT EXISTS shared (id INTEGER PRIMARY KEY CHECK (id = 0), data BLOB NOT NULL)",
    // Which group this object is: the alarm handler may run in an object started without its
    // name, and `Group::new` needs DGPK.public.
    "CREATE TABLE IF NOT EXISTS meta (
       id              INTEGER PRIMARY KEY CHECK (id = 0),
       device_group_id BLOB NOT NULL
     )",
    // The skeleton's echo counters (before the state machine was plugged in).
    "DROP TABLE IF EXISTS counters",
];

/// Creates the tables that are missing.
pub(crate) fn create(sql: &SqlStorage) -> worker::Result<()> {
    for statement in SCHEMA {
        sql.exec(statement, None)?;
    }
    Ok(())
}

/// Whether the schema has been created (by [`create`]; `deleteAll` removes it again).
pub(crate) fn exists(sql: &SqlStorage) -> worker::Result<bool> {
    let cursor = sql.exec(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'slot'",
        None,
    )?;
    for row in cursor.raw() {
        if let Some(SqlStorageValue::Integer(n)) = row?.into_iter().next() {
            return Ok(n > 0);
        }
    }
    Ok(false)
}

/// The group id stored by [`remember_group_id`], if any.
pub(crate) fn stored_group_id(sql: &SqlStorage) -> worker::Result<Option<PublicKey>> {
    let cursor = sql.exec("SELECT device_group_id FROM meta WHERE id = 0", None)?;
    for row in cursor.raw() {
        if let Some(SqlStorageValue::Blob(bytes)) = row?.into_iter().next() {
            return Ok(<[u8; 32]>::try_from(bytes).ok().map(PublicKey));
        }
    }
    Ok(None)
}

/// Stores which group this object serves.
pub(crate) fn remember_group_id(sql: &SqlStorage, id: &PublicKey) -> worker::Result<()> {
    sql.exec(
        "INSERT INTO meta (id, device_group_id) VALUES (0, ?) \
         ON CONFLICT (id) DO UPDATE SET device_group_id = excluded.device_group_id",
        vec![SqlStorageValue::Blob(id.0.to_vec())],
    )?;
    Ok(())
}

/// Empties every group table (the development store self-test's object only).
#[cfg(feature = "dev")]
pub(crate) fn wipe(sql: &SqlStorage) -> worker::Result<()> {
    for table in ["slot", "envelope", "queue", "staged", "shared", "meta"] {
        sql.exec(&format!("DELETE FROM {table}"), None)?;
    }
    Ok(())
}
