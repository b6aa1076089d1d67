//! PostgreSQL failover under two chat-server nodes: a primary with a synchronous standby (real
//! servers started by the test), both nodes on the host list with
//! `target_session_attrs=read-write`. The primary is SIGKILLed while messages flow, the standby
//! is promoted, the nodes find it by themselves, the sender resends what got no ack: every
//! message that was acked is delivered (counted), none twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::pg::PgServer;
use support::{drain_backlog, text_message, Account, Client, ClientError, ServerProcess};
use tandem_shared::csp::{CspClientConfig, CspPayload, MessageAck, MessageFlags};

/// Connects, retrying while the node cannot log in (its database is failing over).
async fn connect_retrying(addr: SocketAddr, config: &CspClientConfig) -> Client {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(client) = Client::connect(addr, config.clone()).await {
            return client;
        }
        assert!(Instant::now() < deadline, "no login within 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn send(client: &mut Client, x: &Account, y: &Account, id: u64) {
    let m = text_message(x, y, id, MessageFlags::NONE, &format!("text {id}"));
    client
        .csp
        .send(&CspPayload::OutgoingMessage(m).encode().unwrap())
        .unwrap();
}

#[tokio::test]
async fn sigkill_of_the_primary_and_promotion_of_the_standby_lose_no_acked_message() {
    let setup = Instant::now();
    let mut primary = PgServer::primary();
    primary.ensure_database("tandem");
    let standby = std::sync::Arc::new(PgServer::standby(&primary, "standby1"));
    primary.require_sync_standby();
    let url = format!(
        "postgres://{role}@127.0.0.1:{p},127.0.0.1:{s}/tandem?target_session_attrs=read-write&connect_timeout=5",
        role = support::pg::ROLE,
        p = primary.port,
        s = standby.port
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--database", url.as_str(), "--sweep-interval-ms", "500"];
    let a = ServerProcess::start(da.path(), &args);
    std::fs::copy(da.path().join("server.key"), db.path().join("server.key")).unwrap();
    let b = ServerProcess::start(db.path(), &args);
    let x = Account::create(a.http).await;
    let y = Account::create(b.http).await;
    let x_config = x.config(&a.public_key, 1);
    eprintln!("failover: set up in {:?}", setup.elapsed());

    const N: u64 = 1_500;
    const KILL_AT: usize = 400;
    const IN_FLIGHT: usize = 64;
    let mut client = connect_retrying(a.csp, &x_config).await;
    let mut acked = BTreeSet::new();
    let mut outstanding = BTreeSet::new();
    let mut next = 1_u64;
    let mut promotion = None;
    let started = Instant::now();
    let mut reconnects = 0;
    while acked.len() < usize::try_from(N).unwrap() {
        while outstanding.len() < IN_FLIGHT && next <= N {
            send(&mut client, &x, &y, next);
            outstanding.insert(next);
            next += 1;
        }
        let flushed = client.flush().await;
        if acked.len() >= KILL_AT && promotion.is_none() {
            primary.kill();
            eprintln!("failover: primary killed after {:?}", started.elapsed());
            // The failover tool's part: promote the standby a second later, while the nodes
            // and the sender keep trying.
            let standby = std::sync::Arc::clone(&standby);
            promotion = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                standby.promote();
                eprintln!("failover: standby promoted");
            }));
        }
        let event = match flushed {
            Ok(()) => client.recv_within(Duration::from_secs(1)).await,
            Err(e) => Err(e),
        };
        match event {
            Ok(CspPayload::OutgoingMessageAck(MessageAck { message_id, .. })) => {
                outstanding.remove(&message_id);
                acked.insert(message_id);
            }
            Ok(CspPayload::CloseError { .. }) | Err(ClientError::Timeout) => {}
            Err(ClientError::Closed | ClientError::Io(_)) => {
                // The node closed the session (storage failure): log in again and resend
                // everything that has no ack yet (duplicates are acked, not queued twice).
                reconnects += 1;
                eprintln!("failover: session closed after {:?}", started.elapsed());
                client = connect_retrying(a.csp, &x_config).await;
                eprintln!("failover: logged in again after {:?}", started.elapsed());
                for &id in &outstanding {
                    send(&mut client, &x, &y, id);
                }
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("{e:?}"),
        }
    }
    promotion
        .expect("the primary was killed mid-stream")
        .join()
        .expect("the standby was promoted");
    assert!(
        reconnects > 0,
        "the failover was noticed by the sender's session"
    );

    eprintln!("failover: all acked after {:?}", started.elapsed());
    // Y logs in on the other node (on the promoted standby now) and gets every acked message.
    let mut yb = connect_retrying(b.csp, &y.config(&b.public_key, 1)).await;
    let delivered: Vec<u64> = drain_backlog(&mut yb)
        .await
        .iter()
        .map(|m| m.message_id)
        .collect();
    let unique: BTreeSet<u64> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "no message delivered twice");
    let lost: Vec<&u64> = acked.difference(&unique).collect();
    eprintln!(
        "failover: {} acked, {} delivered, {} lost, {reconnects} reconnects",
        acked.len(),
        unique.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
}
