//! The storage rules that several nodes rely on, checked on both backends through the crate's
//! own storage API (SQLite in a temporary directory, PostgreSQL on a real server started by the
//! test): a remove by a demoted session's epoch does nothing, two storage workers on one
//! PostgreSQL database (two nodes) give one receiver gapless sequence numbers in commit order,
//! and housekeeping runs only on the node that holds its advisory lock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::pg;
use tandem_chat_server::config::SyncMode;
use tandem_chat_server::directory::Directory;
use tandem_chat_server::mailbox::{MailItem, Mailbox, StoreOutcome};
use tandem_chat_server::registry::Registry;
use tandem_chat_server::store::{
    Command, Database, Enqueue, PgSettings, PushTarget, Store, StoreConfig, HOUSEKEEPING_LOCK,
};
use tandem_shared::csp::MessageFlags;

const RECEIVER: [u8; 8] = *b"RECEIVER";
const SENDER: [u8; 8] = *b"SENDER01";

async fn open(database: Database) -> Store {
    open_limited(database, 100_000).await
}

async fn open_limited(database: Database, max_queue: u32) -> Store {
    let loaded = Store::open(
        StoreConfig {
            database,
            sync: SyncMode::Full,
            max_queue,
            dedupe_window_ms: 86_400_000,
            unreceived: None,
        },
        &Directory::default(),
        Registry::new(),
    )
    .await
    .unwrap();
    loaded.store
}

fn postgres(url: &str) -> Database {
    Database::Postgres(PgSettings {
        url: url.to_owned(),
        sweep_interval: Duration::from_secs(600),
        hints: true,
        connections: 2,
    })
}

async fn enqueue(store: &Store, message_id: u64) {
    enqueue_expiring(store, message_id, None).await;
}

async fn enqueue_expiring(store: &Store, message_id: u64, expires_at_ms: Option<u64>) {
    assert_eq!(
        try_enqueue(store, message_id, expires_at_ms).await,
        StoreOutcome::Stored
    );
}

async fn try_enqueue(store: &Store, message_id: u64, expires_at_ms: Option<u64>) -> StoreOutcome {
    let reply = Mailbox::new();
    store
        .send(Command::Enqueue(Box::new(Enqueue {
            receiver: RECEIVER,
            sender: SENDER,
            message_id,
            flags: MessageFlags::NONE,
            expires_at_ms,
            body: Arc::from(&b"body"[..]),
            ack: true,
            reply: Arc::clone(&reply),
        })))
        .await
        .unwrap();
    store.flush().await.unwrap();
    match reply.drain().items.as_slice() {
        [MailItem::Stored { outcome, .. }] => *outcome,
        other => panic!("unexpected {other:?}"),
    }
}

/// A session's removal of `seq` under `epoch`, committed.
async fn remove(store: &Store, seq: u64, epoch: u64) {
    store
        .send(Command::Remove {
            receiver: RECEIVER,
            seq,
            epoch,
        })
        .await
        .unwrap();
    store.flush().await.unwrap();
}

/// A receiving session's first read of its queue (the backlog fetch) under `epoch`.
async fn start_reading(store: &Store, epoch: u64) {
    let reply = Mailbox::new();
    store
        .send(Command::Fetch {
            receiver: RECEIVER,
            after: 0,
            limit: 1,
            backlog: true,
            epoch,
            reply,
        })
        .await
        .unwrap();
    store.flush().await.unwrap();
}

/// (seq, message id) of everything queued for the receiver.
async fn queued(store: &Store) -> Vec<(u64, u64)> {
    let reply = Mailbox::new();
    store
        .send(Command::Fetch {
            receiver: RECEIVER,
            after: 0,
            limit: 10_000,
            backlog: false,
            epoch: 0,
            reply: Arc::clone(&reply),
        })
        .await
        .unwrap();
    store.flush().await.unwrap();
    match reply.drain().items.as_slice() {
        [MailItem::Fetched { messages, .. }] => {
            messages.iter().map(|m| (m.seq, m.message_id)).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn demoted_removes_do_nothing(store: &Store) {
    enqueue(store, 1).await;
    enqueue(store, 2).await;
    let old = store.claim(RECEIVER, 1).await.unwrap().0;
    let new = store.claim(RECEIVER, 2).await.unwrap().0;
    assert!(new > old);
    let seqs: Vec<u64> = queued(store).await.iter().map(|q| q.0).collect();
    // The new session starts reading; then the old session's late ack comes.
    start_reading(store, new).await;
    remove(store, seqs[0], old).await;
    assert_eq!(
        queued(store).await.len(),
        2,
        "a demoted session removed a message"
    );
    remove(store, seqs[0], new).await;
    assert_eq!(
        queued(store).await.len(),
        1,
        "the receiving session's remove counts"
    );
}

#[tokio::test]
async fn a_demoted_sessions_removes_do_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(Database::Sqlite {
        dir: dir.path().to_owned(),
    })
    .await;
    demoted_removes_do_nothing(&store).await;
}

fn fresh_database() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = pg::shared();
    let name = pg::database_for(dir.path());
    server.ensure_database(&name);
    (dir, server.url(&name))
}

#[tokio::test]
async fn a_demoted_sessions_removes_do_nothing_on_postgres() {
    let (_dir, url) = fresh_database();
    let store = open(postgres(&url)).await;
    demoted_removes_do_nothing(&store).await;
    // Claimed on another node: the epoch is the database's, not the node's.
    let other = open(postgres(&url)).await;
    let epoch = other.claim(RECEIVER, 1).await.unwrap().0;
    assert_eq!(
        store.claim(RECEIVER, 9).await.unwrap(),
        (epoch + 1, true),
        "taken over from another node"
    );
}

#[tokio::test]
async fn two_nodes_give_one_receiver_gapless_sequence_numbers_in_commit_order() {
    let (_dir, url) = fresh_database();
    let a = open(postgres(&url)).await;
    let b = open(postgres(&url)).await;
    // Both nodes enqueue to the same receiver at once, each in many small batches.
    let run = |store: Store, base: u64| async move {
        for i in 0..200 {
            enqueue(&store, base + i).await;
        }
    };
    tokio::join!(run(a.clone(), 1_000), run(b.clone(), 2_000));
    let got = queued(&a).await;
    assert_eq!(got.len(), 400);
    let seqs: Vec<u64> = got.iter().map(|q| q.0).collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>(), "gapless, from 1");
    // Each node's own messages keep their order.
    for base in [1_000, 2_000] {
        let ids: Vec<u64> = got
            .iter()
            .map(|q| q.1)
            .filter(|id| (base..base + 200).contains(id))
            .collect();
        assert_eq!(ids, (base..base + 200).collect::<Vec<_>>());
    }
    assert_eq!(queued(&b).await, got, "both nodes read the same queue");
}

#[tokio::test]
async fn housekeeping_runs_only_on_the_node_holding_the_advisory_lock() {
    let (_dir, url) = fresh_database();
    let store = open(postgres(&url)).await;
    // A short-lived message that has expired already.
    enqueue_expiring(&store, 1, Some(1)).await;
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = || async {
        db.query_one("SELECT COUNT(*) FROM queue", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(rows().await, 1);
    // Another node is doing housekeeping: this one skips its round.
    db.execute("SELECT pg_advisory_lock($1)", &[&HOUSEKEEPING_LOCK])
        .await
        .unwrap();
    store.send(Command::Purge).await.unwrap();
    store.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rows().await, 1, "purged while another node held the lock");
    db.execute("SELECT pg_advisory_unlock($1)", &[&HOUSEKEEPING_LOCK])
        .await
        .unwrap();
    store.send(Command::Purge).await.unwrap();
    let deadline = std::time::Instant::now() + support::PATIENCE;
    while rows().await != 0 {
        assert!(std::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.login(RECEIVER).await.unwrap().queued,
        0,
        "the queue count follows the purge"
    );
}

/// A full queue refuses (and forgets the dedupe key, so a resend is stored later); a removal
/// makes room.
async fn queue_limit_holds(store: &Store) {
    for id in 1..=3 {
        enqueue(store, id).await;
    }
    assert_eq!(try_enqueue(store, 4, None).await, StoreOutcome::QueueFull);
    assert_eq!(try_enqueue(store, 1, None).await, StoreOutcome::Duplicate);
    let epoch = store.claim(RECEIVER, 1).await.unwrap().0;
    let first = queued(store).await[0].0;
    remove(store, first, epoch).await;
    assert_eq!(try_enqueue(store, 4, None).await, StoreOutcome::Stored);
    assert_eq!(try_enqueue(store, 5, None).await, StoreOutcome::QueueFull);
    let ids: Vec<u64> = queued(store).await.iter().map(|q| q.1).collect();
    assert_eq!(ids, vec![2, 3, 4]);
    assert_eq!(store.login(RECEIVER).await.unwrap().queued, 3);
}

#[tokio::test]
async fn a_full_queue_refuses_until_a_removal_makes_room_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_limited(
        Database::Sqlite {
            dir: dir.path().to_owned(),
        },
        3,
    )
    .await;
    queue_limit_holds(&store).await;
}

#[tokio::test]
async fn a_full_queue_refuses_until_a_removal_makes_room_on_postgres() {
    let (_dir, url) = fresh_database();
    let store = open_limited(postgres(&url), 3).await;
    queue_limit_holds(&store).await;
    let seqs: Vec<u64> = queued(&store).await.iter().map(|q| q.0).collect();
    assert_eq!(
        seqs,
        vec![2, 3, 4],
        "a refused message gives its sequence number back"
    );
}

#[tokio::test]
async fn the_old_sessions_acks_count_until_the_new_one_reads_on_postgres() {
    let (_dir, url) = fresh_database();
    let (a, b) = (open(postgres(&url)).await, open(postgres(&url)).await);
    enqueue(&a, 1).await;
    enqueue(&a, 2).await;
    let old = b.claim(RECEIVER, 1).await.unwrap().0;
    start_reading(&b, old).await;
    let seqs: Vec<u64> = queued(&a).await.iter().map(|q| q.0).collect();
    // Node A takes over; node B commits an ack its session handled before it heard of that.
    let (new, handover) = a.claim(RECEIVER, 1).await.unwrap();
    assert!(handover && new > old);
    remove(&b, seqs[0], old).await;
    assert_eq!(
        queued(&a).await.len(),
        1,
        "the ack before the new reader counts"
    );
    // Once node A's session reads, node B's acks do nothing.
    start_reading(&a, new).await;
    remove(&b, seqs[1], old).await;
    assert_eq!(
        queued(&a).await.len(),
        1,
        "a demoted session removed a message"
    );
}

/// A plain connection to the test database, beside the nodes.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until some backend waits for a lock that `holder` holds.
async fn wait_until_blocked_by(monitor: &tokio_postgres::Client, holder: i32) {
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let waiting: i64 = monitor
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&holder],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody waits for {holder}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_batch_aborted_by_a_deadlock_runs_again_on_postgres() {
    const LOCK: &str = "SELECT 1 FROM receiving WHERE identity = $1 FOR UPDATE";
    let (_dir, url) = fresh_database();
    // One storage thread, so that every command below goes through the same batches.
    let store = open(Database::Postgres(PgSettings {
        url: url.clone(),
        sweep_interval: Duration::from_secs(600),
        hints: false,
        connections: 1,
    }))
    .await;
    let (a, b, c) = (*b"AAAAAAAA", *b"BBBBBBBB", *b"CCCCCCCC");
    for identity in [a, b, c] {
        store.claim(identity, 1).await.unwrap();
    }
    let (monitor, first, second) = (
        connect(&url).await,
        connect(&url).await,
        connect(&url).await,
    );
    let (first_pid, second_pid) = (backend_pid(&first).await, backend_pid(&second).await);
    // `second` is never the one PostgreSQL picks to end the deadlock: the batch is.
    second
        .batch_execute("SET deadlock_timeout = '60s'")
        .await
        .unwrap();
    first.batch_execute("BEGIN").await.unwrap();
    first.execute(LOCK, &[&&c[..]]).await.unwrap();
    second.batch_execute("BEGIN").await.unwrap();
    second.execute(LOCK, &[&&b[..]]).await.unwrap();
    // The storage thread waits for C's row; the claims of A and B queue up behind it and
    // form the next batch.
    let claim_c = tokio::spawn({
        let store = store.clone();
        async move { store.claim(c, 2).await }
    });
    wait_until_blocked_by(&monitor, first_pid).await;
    let mut replies = Vec::new();
    for identity in [a, b] {
        let (reply, rx) = tokio::sync::oneshot::channel();
        store
            .send(Command::Claim {
                identity,
                session_id: 2,
                reply,
            })
            .await
            .unwrap();
        replies.push(rx);
    }
    first.batch_execute("COMMIT").await.unwrap();
    // That batch locks A's row and waits for B's; taking A's row now closes the cycle, and
    // PostgreSQL aborts the batch (after its deadlock_timeout, 1 s).
    wait_until_blocked_by(&monitor, second_pid).await;
    second.execute(LOCK, &[&&a[..]]).await.unwrap();
    second.batch_execute("COMMIT").await.unwrap();
    assert!(claim_c.await.unwrap().is_ok());
    for (identity, rx) in [a, b].iter().zip(replies) {
        let answer = rx.await.unwrap();
        assert!(
            answer.is_ok(),
            "claim of {} in the deadlocked batch: {answer:?}",
            String::from_utf8_lossy(identity)
        );
    }
    let epochs: Vec<i64> = monitor
        .query("SELECT epoch FROM receiving ORDER BY identity", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(epochs, vec![2, 2, 2], "every claim committed once");
}

#[tokio::test]
async fn a_node_on_postgres_loads_no_identity_at_start_and_reads_them_on_use() {
    let (_dir, url) = fresh_database();
    let first = open(postgres(&url)).await;
    let created = first
        .create_identity(tandem_shared::crypto::PublicKey([7; 32]))
        .await
        .unwrap();
    // A node that starts later: with a million identities, loading them all would cost every
    // node minutes and gigabytes; it finds each one in the database when it is used.
    let directory = Directory::bounded(10);
    let second = Store::open(
        StoreConfig {
            database: postgres(&url),
            sync: SyncMode::Full,
            max_queue: 100_000,
            dedupe_window_ms: 86_400_000,
            unreceived: None,
        },
        &directory,
        Registry::new(),
    )
    .await
    .unwrap()
    .store;
    assert!(
        directory.is_empty(),
        "{} identities loaded",
        directory.len()
    );
    let found = second.lookup(created.identity).await.unwrap().unwrap();
    assert_eq!(found.public_key.0, [7; 32]);
}

/// The push URL of an identity (docs/chat-server.md "Push"): kept, replaced, forgotten, and read
/// together with the identity's queue length, which is what the push task asks.
async fn push_urls_are_kept_with_their_queue_length(store: &Store) {
    let id = store
        .create_identity(tandem_shared::crypto::PublicKey([9; 32]))
        .await
        .unwrap()
        .identity;
    let target = |url: Option<&str>, queued| PushTarget {
        url: url.map(str::to_owned),
        queued,
    };
    assert_eq!(store.push_target(id).await.unwrap(), target(None, 0));
    for url in ["https://m.example/push/a", "https://m.example/push/b"] {
        store
            .send(Command::SetPushUrl {
                identity: id,
                url: Some(url.into()),
            })
            .await
            .unwrap();
    }
    let reply = Mailbox::new();
    store
        .send(Command::Enqueue(Box::new(Enqueue {
            receiver: id,
            sender: SENDER,
            message_id: 1,
            flags: MessageFlags::NONE,
            expires_at_ms: None,
            body: Arc::from(&b"body"[..]),
            ack: true,
            reply,
        })))
        .await
        .unwrap();
    assert_eq!(
        store.push_target(id).await.unwrap(),
        target(Some("https://m.example/push/b"), 1),
        "the last registration wins"
    );
    store
        .send(Command::SetPushUrl {
            identity: id,
            url: None,
        })
        .await
        .unwrap();
    assert_eq!(store.push_target(id).await.unwrap(), target(None, 1));
}

#[tokio::test]
async fn push_urls_are_kept_with_their_queue_length_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(Database::Sqlite {
        dir: dir.path().to_owned(),
    })
    .await;
    push_urls_are_kept_with_their_queue_length(&store).await;
}

#[tokio::test]
async fn push_urls_are_kept_with_their_queue_length_on_postgres() {
    let (_dir, url) = fresh_database();
    let store = open(postgres(&url)).await;
    push_urls_are_kept_with_their_queue_length(&store).await;
}

/// A database written by schema 1 (before push URLs) opens: its identities and queue stay and
/// the column is added.
#[tokio::test]
async fn a_schema_1_sqlite_database_gains_the_push_url_column() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("chat.sqlite3")).unwrap();
        conn.execute_batch(
            "CREATE TABLE identities (identity BLOB PRIMARY KEY, public_key BLOB NOT NULL UNIQUE,
                 created_at INTEGER NOT NULL, device_cookie BLOB,
                 cookie_changed INTEGER NOT NULL DEFAULT 0);
             INSERT INTO identities VALUES (x'4f4c444f4c443031', x'0101010101010101010101010101010101010101010101010101010101010101', 1, NULL, 0);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = open(Database::Sqlite {
        dir: dir.path().to_owned(),
    })
    .await;
    let old = *b"OLDOLD01";
    assert!(
        store.lookup(old).await.unwrap().is_some(),
        "the identity stays"
    );
    store
        .send(Command::SetPushUrl {
            identity: old,
            url: Some("https://m.example/push/c".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        store.push_target(old).await.unwrap().url.as_deref(),
        Some("https://m.example/push/c")
    );
}
