//! The mediator for real: native devices (the harness in `tandem_tests::harness`) against the
//! Worker under `wrangler dev`, proxying to a real chat server process. One fixture serves every
//! scenario; each scenario has its own identity, so its own device group.
//!
//! The same scenarios also run against `shared`'s state machine in this process
//! (`LocalMediator`): a failure under `wrangler dev` alone is the Worker's.
//!
//! `TANDEM_SCENARIO=reflect,transactions cargo test -p tandem-tests --test mediator_integration
//! -- --nocapture` runs only the named scenarios (docs/testing.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::RngCore;
use tandem_shared::app::TANDEM_PUSH_TOKEN_TYPE;
use tandem_shared::crypto::random_nonce;
use tandem_shared::csp::{
    open_message, seal_message_with_nonce, CspPayload, E2eMessageType, MessageAck, MessageFlags,
    MessageToSeal, PushToken,
};
use tandem_shared::d2d::Scope;
use tandem_shared::d2m::{CloseCode, TANDEM_FEATURE_CSP_ON_DEMAND};
use tandem_shared::device::{ConnectionState, DeviceConfig, Event, ServerInfo};
use tandem_shared::keys::DeviceGroupKey;
use tandem_shared::mediator::GroupConfig;
use tandem_shared::proto::common::CspE2eMessageType;
use tandem_shared::proto::d2d::{
    conversation_id, envelope::Content, outgoing_message_update, ConversationId, Envelope,
    IncomingMessage, OutgoingMessage, OutgoingMessageUpdate,
};
use tandem_shared::proto::d2m::client_hello::DeviceSlotsExhaustedPolicy;
use tandem_shared::proto::d2m::{DeviceSlotExpirationPolicy, DeviceSlotState};
use tandem_tests::harness::{
    http_request, lookup_public_key, random_device_id, Device, Fixture, HarnessError, Identity,
    Mediator, RawSocket, Received, Runner, ScenarioResult, TransactionStart,
};
use tokio_tungstenite::tungstenite::Message;

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);
/// How long a close is waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(20);
/// The default `max_queue_len` (docs/mediator.md); one more entry drops the slot with 4114.
const MAX_QUEUE_LEN: u64 = 10_000;
/// Upper bound for one scenario.
const SCENARIO_LIMIT: Duration = Duration::from_secs(10 * 60);

// ---- the two test functions -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mediator_worker_under_wrangler_dev() {
    let started = Instant::now();
    let mut fx = match Fixture::with_wrangler(&[]).await {
        Ok(fx) => fx,
        Err(err) => panic!("the fixture did not start: {err}"),
    };
    eprintln!("fixture up after {:.1?}", started.elapsed());
    run_all(&mut fx, "wrangler dev").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_state_machine_in_process() {
    let mut fx = match Fixture::with_local_mediator(GroupConfig::default()).await {
        Ok(fx) => fx,
        Err(err) => panic!("the fixture did not start: {err}"),
    };
    run_all(&mut fx, "local mediator").await;
}

async fn run_all(fx: &mut Fixture, label: &str) {
    let mut runner = Runner::from_env(label, SCENARIO_LIMIT);
    runner.run("challenge", challenge(fx)).await;
    runner.run("slots", slots(fx)).await;
    runner.run("leader", leader(fx)).await;
    runner.run("reflect", reflect(fx)).await;
    runner.run("queue_limit", queue_limit(fx)).await;
    runner.run("transactions", transactions(fx)).await;
    runner.run("devices", devices(fx)).await;
    runner.run("end_to_end", end_to_end(fx)).await;
    runner.run("restart", restart(fx, false)).await;
    runner.run("crash", restart(fx, true)).await;
    runner.run("bad_input", bad_input(fx)).await;
    runner.run("lenient_urls", lenient_urls(fx)).await;
    runner.run("csp_sockets", csp_sockets(fx)).await;
    runner.run("handshake_cap", handshake_cap(fx)).await;
    runner.run("turn_bound", turn_bound(fx)).await;
    runner.run("hibernation", hibernation(fx)).await;
    runner.run("storage_lifecycle", storage_lifecycle(fx)).await;
    runner.run("not_reading", not_reading(fx)).await;
    runner.run("csp_on_demand", csp_on_demand(fx)).await;
    runner.run("no_crash_logged", no_crash_logged(fx)).await;
    for (what, took) in &fx.timings {
        eprintln!("[{label}] {what}: {took:.1?}");
    }
    let summary = runner.summary();
    eprintln!("{summary}");
    if runner.failed() {
        fx.keep_scratch();
        panic!(
            "{summary}\nlogs kept in {}\n{}",
            fx.scratch().display(),
            fx.log_tails(40)
        );
    }
}

// ---- helpers ------------------------------------------------------------------------------------

/// A message envelope that carries `tag` and `attempt`, so every reflect is recognisable.
fn tagged(tag: u64, attempt: u32) -> Envelope {
    Envelope {
        padding: Vec::new(),
        device_id: 0,
        protocol_version: 0,
        content: Some(Content::OutgoingMessage(OutgoingMessage {
            conversation: Some(contact("ECHOECHO")),
            message_id: tag,
            created_at: 1,
            r#type: CspE2eMessageType::Text.into(),
            body: attempt.to_le_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// `count` tagged envelopes of ≈ 60 KiB each (tags from 0).
fn big_tagged(count: u64) -> Vec<Envelope> {
    (0..count)
        .map(|tag| {
            let mut envelope = tagged(tag, 0);
            if let Some(Content::OutgoingMessage(m)) = envelope.content.as_mut() {
                m.body.resize(60_000, 0);
            }
            envelope
        })
        .collect()
}

fn tags(count: u64, from: u64) -> Vec<Envelope> {
    (from..from + count).map(|tag| tagged(tag, 0)).collect()
}

/// `(tag, attempt)` of an envelope made by [`tagged`].
fn tag_of(envelope: &Envelope) -> (u64, u32) {
    match &envelope.content {
        Some(Content::OutgoingMessage(m)) => (
            m.message_id,
            u32::from_le_bytes(m.body[..4].try_into().unwrap()),
        ),
        other => panic!("not a tagged envelope: {other:?}"),
    }
}

fn tags_of(received: &[Received]) -> Vec<u64> {
    received.iter().map(|r| tag_of(&r.envelope).0).collect()
}

fn contact(identity: &str) -> ConversationId {
    ConversationId {
        id: Some(conversation_id::Id::Contact(identity.to_owned())),
    }
}

fn url(fx: &Fixture, id: &Identity) -> String {
    id.mediator_url(&fx.ws_base()).unwrap()
}

fn existing(mut config: DeviceConfig) -> DeviceConfig {
    config.expected_slot_state = DeviceSlotState::Existing;
    config
}

/// Connects and waits for `ServerInfo` and `ReflectionQueueDry`.
async fn online(
    fx: &Fixture,
    id: &Identity,
    name: &str,
    config: DeviceConfig,
) -> Result<(Device, ServerInfo), HarnessError> {
    let (mut device, info) = Device::connect_online(&url(fx, id), name, config).await?;
    if info.reflection_queue_length == 0 {
        device.queue_dry().await?;
    }
    Ok((device, info))
}

/// The close code a connection attempt with `config` ends with.
async fn refused(
    fx: &Fixture,
    id: &Identity,
    name: &str,
    config: DeviceConfig,
) -> Result<u16, HarnessError> {
    let mut device = Device::connect(&url(fx, id), name, config).await?;
    Ok(device.closed(CLOSE_WAIT).await?.as_u16())
}

async fn no_promotion(device: &mut Device) -> Result<(), HarnessError> {
    device
        .expect_none(QUIET, "watching for a second leader", |e| {
            matches!(e, Event::PromotedToLeader)
        })
        .await
}

async fn no_reflected(device: &mut Device, context: &str) -> Result<(), HarnessError> {
    device
        .expect_none(QUIET, context, |e| matches!(e, Event::Reflected { .. }))
        .await
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

// ---- scenarios ----------------------------------------------------------------------------------

/// Nothing above made the Worker panic or throw, even where the device saw the right close code
/// (workerd's line after a clean client close is counted, not a crash: `mediator_crashes`).
async fn no_crash_logged(fx: &mut Fixture) -> ScenarioResult {
    let lines = fx.mediator_crashes();
    assert!(
        lines.is_empty(),
        "the mediator logged crashes:\n{}",
        lines.join("\n")
    );
    Ok(())
}

/// A device that does not hold the group key (wrong DGK) fails the challenge: 4010, no slot.
async fn challenge(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let mut dgk = [0_u8; 32];
    OsRng.fill_bytes(&mut dgk);
    let mut impostor = id.device_config(random_device_id(), "impostor");
    impostor.keys = DeviceGroupKey::from_bytes(dgk).derive_keys();
    assert_eq!(refused(fx, &id, "impostor", impostor).await?, 4010);

    let a_id = random_device_id();
    let (mut a, info) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    assert_eq!(info.device_slot_state, DeviceSlotState::New);
    let devices = a.devices_info().await?;
    assert_eq!(
        devices.iter().map(|d| d.device_id).collect::<Vec<_>>(),
        vec![a_id],
        "the impostor got no slot"
    );
    Ok(())
}

/// Slots: 4111 with REJECT, DROP_LEAST_RECENT evicts the slot offline longest, 4115 on an
/// expectation mismatch either way, 4112 for a duplicate device id, DropDevice → 4113 and the
/// queue gone.
async fn slots(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let ids: Vec<u64> = (0..10).map(|_| random_device_id()).collect();
    let name = |i: usize| format!("d{i}");

    // Expecting EXISTING for a slot that never existed.
    let config = existing(id.device_config(ids[1], "d1"));
    assert_eq!(
        refused(fx, &id, "d1 (never connected)", config).await?,
        4115
    );

    let (mut d0, info) = online(fx, &id, "d0", id.device_config(ids[0], "d0")).await?;
    assert_eq!(info.max_device_slots, 8);
    // Seven more slots, disconnected in order d1..d7 (d1 offline longest).
    for (i, &device_id) in ids.iter().enumerate().take(8).skip(1) {
        let (d, _) = online(fx, &id, &name(i), id.device_config(device_id, &name(i))).await?;
        d.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every slot taken: a NEW device with REJECT is refused.
    let config = id.device_config(ids[8], "d8");
    assert_eq!(
        config.slots_exhausted_policy,
        DeviceSlotsExhaustedPolicy::Reject
    );
    assert_eq!(refused(fx, &id, "d8 (REJECT)", config).await?, 4111);

    // DROP_LEAST_RECENT evicts d1.
    let mut config = id.device_config(ids[9], "d9");
    config.slots_exhausted_policy = DeviceSlotsExhaustedPolicy::DropLeastRecent;
    let (d9, info) = online(fx, &id, "d9", config).await?;
    assert_eq!(info.device_slot_state, DeviceSlotState::New);
    d9.disconnect().await;
    let present: BTreeSet<u64> = d0
        .devices_info()
        .await?
        .iter()
        .map(|d| d.device_id)
        .collect();
    let expected: BTreeSet<u64> = [0, 2, 3, 4, 5, 6, 7, 9].iter().map(|&i| ids[i]).collect();
    assert_eq!(
        present, expected,
        "d1 (offline longest) was evicted, d8 never got a slot"
    );
    let config = existing(id.device_config(ids[1], "d1"));
    assert_eq!(refused(fx, &id, "d1 (evicted)", config).await?, 4115);

    // NEW for a slot that exists.
    let config = id.device_config(ids[3], "d3");
    assert_eq!(refused(fx, &id, "d3 (expects NEW)", config).await?, 4115);

    // The same device id twice: the older connection goes with 4112, the newer works.
    let (mut d2_old, _) = online(
        fx,
        &id,
        "d2 (first)",
        existing(id.device_config(ids[2], "d2")),
    )
    .await?;
    let (mut d2, info) = online(
        fx,
        &id,
        "d2 (second)",
        existing(id.device_config(ids[2], "d2")),
    )
    .await?;
    assert_eq!(info.device_slot_state, DeviceSlotState::Existing);
    assert_eq!(d2_old.closed(CLOSE_WAIT).await?.as_u16(), 4112);
    let reflected = d0.reflect_all(&tags(3, 0)).await?;
    d0.reflect_acks(&reflected).await?;
    let got = d2.receive_reflected(3, false).await?;
    assert_eq!(tags_of(&got), vec![0, 1, 2]);

    // DropDevice on an online device (its 3 entries unacked) and an offline one (d4, 3 queued).
    d0.drop_device(ids[2]).await?;
    assert_eq!(d2.closed(CLOSE_WAIT).await?.as_u16(), 4113);
    d0.drop_device(ids[4]).await?;
    let present: BTreeSet<u64> = d0
        .devices_info()
        .await?
        .iter()
        .map(|d| d.device_id)
        .collect();
    assert!(
        !present.contains(&ids[2]) && !present.contains(&ids[4]),
        "{present:?}"
    );
    for i in [2, 4] {
        let config = existing(id.device_config(ids[i], &name(i)));
        assert_eq!(
            refused(fx, &id, &name(i), config).await?,
            4115,
            "d{i} dropped"
        );
        let (_, info) = online(fx, &id, &name(i), id.device_config(ids[i], &name(i))).await?;
        assert_eq!(info.device_slot_state, DeviceSlotState::New);
        assert_eq!(info.reflection_queue_length, 0, "d{i}'s queue is gone");
    }
    // A device still holding its slot keeps its queue.
    let (_, info) = online(fx, &id, "d5", existing(id.device_config(ids[5], "d5"))).await?;
    assert_eq!(info.reflection_queue_length, 3);
    Ok(())
}

/// Leader: the first dry device is promoted; when it goes, the longest-connected dry device; a
/// device with a queue is promoted only after its `ReflectionQueueDry`; never two at once.
async fn leader(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (a_id, b_id, c_id) = (random_device_id(), random_device_id(), random_device_id());
    let (mut a, _) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    a.promoted().await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(b_id, "b")).await?;
    let (mut c, _) = online(fx, &id, "c", id.device_config(c_id, "c")).await?;
    no_promotion(&mut b).await?;
    no_promotion(&mut c).await?;

    a.disconnect().await;
    b.promoted().await?;
    no_promotion(&mut c).await?;
    let (mut a, _) = online(fx, &id, "a (back)", existing(id.device_config(a_id, "a"))).await?;
    no_promotion(&mut a).await?;

    // The leader crashes (no close frame): c, connected before a came back, takes over.
    b.abort();
    c.promoted().await?;
    no_promotion(&mut a).await?;

    // Everyone leaves while a has 100 entries queued; a comes back first and leads only once
    // its queue is dry (the session closes with 4010 on a promotion before the dry).
    a.disconnect().await;
    let sent = c.reflect_all(&tags(100, 0)).await?;
    c.reflect_acks(&sent).await?;
    c.disconnect().await;
    let (mut a, info) = Device::connect_online(
        &url(fx, &id),
        "a (queued)",
        existing(id.device_config(a_id, "a")),
    )
    .await?;
    assert_eq!(info.reflection_queue_length, 100);
    let got = a.receive_reflected(100, true).await?;
    assert_eq!(tags_of(&got), (0..100).collect::<Vec<_>>());
    a.queue_dry().await?;
    a.promoted().await?;
    assert!(a.is_leader());
    let (mut b, _) = online(fx, &id, "b (back)", existing(id.device_config(b_id, "b"))).await?;
    b.receive_reflected(100, true).await?;
    no_promotion(&mut b).await?;
    Ok(())
}

/// Reflection: 1 000 envelopes reach two online siblings in order and an offline one after it
/// connects; acked entries never come again, unacked ones do; ephemeral ones only reach online
/// siblings and are never queued.
async fn reflect(fx: &mut Fixture) -> ScenarioResult {
    const N: u64 = 1_000;
    let id = fx.identity().await?;
    let (a_id, d_id) = (random_device_id(), random_device_id());
    let (mut a, _) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(random_device_id(), "b")).await?;
    let (mut c, _) = online(fx, &id, "c", id.device_config(random_device_id(), "c")).await?;
    let (d, _) = online(fx, &id, "d", id.device_config(d_id, "d")).await?;
    d.disconnect().await;

    let batched_before = batched_reflects(fx, &id).await?;
    let started = Instant::now();
    let ids = a.reflect_all(&tags(N, 0)).await?;
    let stamps = a.reflect_acks(&ids).await?;
    let reflect_took = started.elapsed();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "ReflectAck times go forward"
    );
    let started = Instant::now();
    let (got_b, got_c) = tokio::join!(
        b.receive_reflected(N as usize, true),
        c.receive_reflected(N as usize, true)
    );
    let deliver_took = started.elapsed();
    eprintln!(
        "  reflect: {N} reflects acked in {reflect_took:.2?}, delivered to 2 siblings in {deliver_took:.2?}"
    );
    if let (Some(before), Some(after)) = (batched_before, batched_reflects(fx, &id).await?) {
        // The pipelined reflects arrive faster than one turn each: the Worker must have stored
        // some of them together (docs/mediator.md "Batched reflects"), and the checks below
        // then cover that path.
        eprintln!(
            "  reflect: {} reflects stored in {} batch calls",
            after.1 - before.1,
            after.0 - before.0
        );
        assert!(after.1 > before.1, "no reflects stored together");
    }
    for got in [got_b?, got_c?] {
        assert_eq!(tags_of(&got), (0..N).collect::<Vec<_>>(), "all, in order");
        assert!(got
            .iter()
            .all(|r| r.envelope.device_id == a_id && !r.ephemeral));
        assert!(got
            .windows(2)
            .all(|w| w[0].reflected_id < w[1].reflected_id));
        assert_eq!(
            got.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
            stamps,
            "Reflected carries the ReflectAck's storing time"
        );
    }

    // d was offline: all 1 000 in order, then dry; acked, nothing again.
    let (mut d, info) =
        Device::connect_online(&url(fx, &id), "d", existing(id.device_config(d_id, "d"))).await?;
    assert_eq!(u64::from(info.reflection_queue_length), N);
    let got = d.receive_reflected(N as usize, true).await?;
    assert_eq!(tags_of(&got), (0..N).collect::<Vec<_>>());
    d.queue_dry().await?;
    d.sync_barrier().await?;
    d.disconnect().await;
    let (mut d, info) = online(fx, &id, "d", existing(id.device_config(d_id, "d"))).await?;
    assert_eq!(info.reflection_queue_length, 0, "acked entries are gone");
    no_reflected(&mut d, "after acking everything").await?;
    d.disconnect().await;

    // Unacked entries come again, in order.
    let ids = a.reflect_all(&tags(10, N)).await?;
    a.reflect_acks(&ids).await?;
    b.receive_reflected(10, true).await?;
    c.receive_reflected(10, true).await?;
    let (mut d, _) =
        Device::connect_online(&url(fx, &id), "d", existing(id.device_config(d_id, "d"))).await?;
    let got = d.receive_reflected(10, false).await?;
    for r in got.iter().step_by(2) {
        d.ack(r.reflected_id).await?;
    }
    d.queue_dry().await?;
    d.sync_barrier().await?;
    d.disconnect().await;
    let (mut d, info) =
        Device::connect_online(&url(fx, &id), "d", existing(id.device_config(d_id, "d"))).await?;
    assert_eq!(info.reflection_queue_length, 5);
    let got = d.receive_reflected(5, true).await?;
    assert_eq!(tags_of(&got), vec![N + 1, N + 3, N + 5, N + 7, N + 9]);
    d.queue_dry().await?;
    d.sync_barrier().await?;
    d.disconnect().await;

    // Ephemeral: online siblings only, no ReflectAck, never queued.
    a.reflect_ephemeral(&tagged(7_777, 0)).await?;
    for sibling in [&mut b, &mut c] {
        let got = sibling.receive_reflected(1, false).await?;
        assert!(got[0].ephemeral);
        assert_eq!(tag_of(&got[0].envelope).0, 7_777);
    }
    a.expect_none(QUIET, "after an ephemeral reflect", |e| {
        matches!(e, Event::ReflectAcked { .. })
    })
    .await?;
    let (mut d, info) = online(fx, &id, "d", existing(id.device_config(d_id, "d"))).await?;
    assert_eq!(info.reflection_queue_length, 0, "ephemeral is never queued");
    no_reflected(&mut d, "ephemeral sent while offline").await?;
    Ok(())
}

/// Under the Worker, `(reflectBatches, reflectsBatched)` of its isolate (development stats);
/// `None` for the in-process mediator.
async fn batched_reflects(fx: &Fixture, id: &Identity) -> Result<Option<(u64, u64)>, HarnessError> {
    let Some(field) = dev_stats(fx, id).await? else {
        return Ok(None);
    };
    Ok(Some((field("reflectBatches"), field("reflectsBatched"))))
}

/// Under the Worker, the isolate's wasm memory in bytes (development stats); `None` for the
/// in-process mediator.
async fn wasm_memory(fx: &Fixture, id: &Identity) -> Result<Option<u64>, HarnessError> {
    Ok(dev_stats(fx, id)
        .await?
        .map(|field| field("wasmMemoryBytes")))
}

/// Under the Worker, a reader of the group object's development stats (a missing field
/// panics, naming it); `None` for the in-process mediator.
async fn dev_stats(
    fx: &Fixture,
    id: &Identity,
) -> Result<Option<impl Fn(&str) -> u64>, HarnessError> {
    let Some(json) = fx.group_stats(id).await? else {
        return Ok(None);
    };
    Ok(Some(move |name: &str| {
        json[name]
            .as_u64()
            .or_else(|| json[name].as_bool().map(u64::from))
            // Present and null (an `Option` that is `None`): 0.
            .or_else(|| json.get(name).and_then(|v| v.is_null().then_some(0)))
            .unwrap_or_else(|| panic!("no {name} in the stats: {json}"))
    }))
}

/// A slot whose queue would exceed `max_queue_len` is dropped: 4114 when online, gone when
/// offline; the reflecting device is unaffected.
async fn queue_limit(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (v_id, w_id) = (random_device_id(), random_device_id());
    let (mut a, _) = online(fx, &id, "a", id.device_config(random_device_id(), "a")).await?;
    let (w, _) = online(fx, &id, "w", id.device_config(w_id, "w")).await?;
    w.disconnect().await;
    let (mut v, _) = online(fx, &id, "v", id.device_config(v_id, "v")).await?;

    let started = Instant::now();
    let ids = a.reflect_all(&tags(MAX_QUEUE_LEN + 1, 0)).await?;
    a.reflect_acks(&ids).await?;
    eprintln!(
        "  queue_limit: {} reflects acked in {:.2?}",
        MAX_QUEUE_LEN + 1,
        started.elapsed()
    );
    assert_eq!(v.closed(CLOSE_WAIT).await?.as_u16(), 4114);
    for (name, device_id) in [("v", v_id), ("w", w_id)] {
        let config = existing(id.device_config(device_id, name));
        assert_eq!(
            refused(fx, &id, name, config).await?,
            4115,
            "{name}'s slot was deleted"
        );
    }
    let (_, info) = online(fx, &id, "v (new)", id.device_config(v_id, "v")).await?;
    assert_eq!(info.reflection_queue_length, 0);
    // The reflecting device keeps working.
    let id_ = a.reflect(&tagged(1, 1)).await?;
    a.reflect_acked(id_).await?;
    Ok(())
}

/// Transactions: one lock per group; reflects inside are invisible until commit and discarded
/// when the holder leaves or its TTL runs out (4011); TransactionEnded reaches the others.
async fn transactions(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (a_id, b_id, c_id) = (random_device_id(), random_device_id(), random_device_id());
    let (mut a, _) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(b_id, "b")).await?;
    let (c, _) = online(fx, &id, "c", id.device_config(c_id, "c")).await?;
    c.disconnect().await;

    assert_eq!(
        a.begin_transaction(Scope::ContactSync, 0).await?,
        TransactionStart::Begun
    );
    assert_eq!(
        b.begin_transaction(Scope::GroupSync, 0).await?,
        TransactionStart::Rejected {
            holder: a_id,
            scope: Some(Scope::ContactSync)
        }
    );
    let ids = a.reflect_all(&tags(3, 1)).await?;
    a.reflect_acks(&ids).await?;
    no_reflected(&mut b, "a's transaction is open").await?;
    a.commit_transaction().await?;
    // b: the committed writes, then TransactionEnded.
    for expected in 1..=3 {
        match b.next_event("a committed write").await? {
            Event::Reflected {
                reflected_id,
                envelope,
                ..
            } => {
                assert_eq!(tag_of(&envelope.0).0, expected);
                b.ack(reflected_id).await?;
            }
            other => panic!("expected Reflected {expected}, got {other:?}"),
        }
    }
    assert_eq!(
        b.transaction_ended().await?,
        (a_id, Some(Scope::ContactSync))
    );

    // b holds the lock, writes, and crashes: discarded, a hears TransactionEnded.
    assert_eq!(
        b.begin_transaction(Scope::GroupSync, 0).await?,
        TransactionStart::Begun
    );
    assert_eq!(
        a.begin_transaction(Scope::SettingsSync, 0).await?,
        TransactionStart::Rejected {
            holder: b_id,
            scope: Some(Scope::GroupSync)
        }
    );
    let ids = b.reflect_all(&tags(2, 10)).await?;
    b.reflect_acks(&ids).await?;
    b.abort();
    assert_eq!(a.transaction_ended().await?, (b_id, Some(Scope::GroupSync)));
    no_reflected(&mut a, "b's transaction was discarded").await?;

    // c was offline: only a's committed writes are queued.
    let (mut c, info) =
        Device::connect_online(&url(fx, &id), "c", existing(id.device_config(c_id, "c"))).await?;
    assert_eq!(info.reflection_queue_length, 3);
    assert_eq!(tags_of(&c.receive_reflected(3, true).await?), vec![1, 2, 3]);
    c.queue_dry().await?;

    // TTL: a asks for 2 s, writes, and sits: 4011; the others hear TransactionEnded.
    let (mut b, _) = online(fx, &id, "b (back)", existing(id.device_config(b_id, "b"))).await?;
    assert_eq!(
        a.begin_transaction(Scope::UserProfileSync, 2).await?,
        TransactionStart::Begun
    );
    let write = a.reflect(&tagged(20, 0)).await?;
    a.reflect_acked(write).await?;
    let started = Instant::now();
    assert_eq!(
        a.closed(Duration::from_secs(30)).await?,
        CloseCode::TransactionTtlExceeded
    );
    let ttl_took = started.elapsed();
    assert!(
        ttl_took < Duration::from_secs(15),
        "4011 after {ttl_took:?}"
    );
    for sibling in [&mut b, &mut c] {
        assert_eq!(
            sibling.transaction_ended().await?,
            (a_id, Some(Scope::UserProfileSync))
        );
        no_reflected(sibling, "a's transaction timed out").await?;
    }
    // The lock is free again.
    assert_eq!(
        b.begin_transaction(Scope::ContactSync, 0).await?,
        TransactionStart::Begun
    );
    b.commit_transaction().await?;
    Ok(())
}

/// Devices info opens (dgdik) to the labels the devices sent, latest ClientHello wins;
/// SetSharedDeviceData shows up in the next ServerInfo.
async fn devices(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (a_id, b_id, c_id) = (random_device_id(), random_device_id(), random_device_id());
    let (mut a, info) = online(fx, &id, "a", id.device_config(a_id, "Laptop")).await?;
    assert_eq!(info.shared_device_data, None, "nothing set yet");
    let (b, _) = online(fx, &id, "b", id.device_config(b_id, "Phone")).await?;
    let (c, _) = online(fx, &id, "c", id.device_config(c_id, "Tablet")).await?;
    c.disconnect().await;

    let entries = a.devices_info().await?;
    let by_id: BTreeMap<u64, _> = entries.iter().map(|e| (e.device_id, e)).collect();
    assert_eq!(by_id.len(), 3);
    for (device_id, label) in [(a_id, "Laptop"), (b_id, "Phone"), (c_id, "Tablet")] {
        let entry = by_id[&device_id];
        let info = entry.info.as_ref().expect("device info opens with dgdik");
        assert_eq!(info.label, label);
        assert_eq!(info.platform_details, "tandem-tests on Linux");
        assert_eq!(
            entry.expiration_policy,
            DeviceSlotExpirationPolicy::Persistent
        );
    }
    assert!(matches!(
        by_id[&a_id].connection_state,
        ConnectionState::ConnectedSince(_)
    ));
    assert!(matches!(
        by_id[&b_id].connection_state,
        ConnectionState::ConnectedSince(_)
    ));
    let ConnectionState::LastDisconnectAt(at) = by_id[&c_id].connection_state else {
        panic!("c is offline: {:?}", by_id[&c_id].connection_state)
    };
    assert!(
        at.abs_diff(now_ms()) < 120_000,
        "disconnect time {at} is wall-clock ms"
    );

    // The latest ClientHello's device info replaces the stored one.
    let (c, _) = online(
        fx,
        &id,
        "c",
        existing(id.device_config(c_id, "Tablet (renamed)")),
    )
    .await?;
    c.disconnect().await;
    let entries = a.devices_info().await?;
    let label = entries
        .iter()
        .find(|e| e.device_id == c_id)
        .and_then(|e| e.info.as_ref().ok())
        .map(|i| i.label.clone());
    assert_eq!(label.as_deref(), Some("Tablet (renamed)"));

    a.set_shared_device_data(7).await?;
    a.sync_barrier().await?;
    b.disconnect().await;
    let (b, info) = online(fx, &id, "b", existing(id.device_config(b_id, "Phone"))).await?;
    let shared = info.shared_device_data.expect("shared data in ServerInfo");
    assert_eq!(shared.expect("opens with dgsddk").version, 7);
    b.disconnect().await;
    a.set_shared_device_data(9).await?;
    a.sync_barrier().await?;
    let (_, info) = online(fx, &id, "c", existing(id.device_config(c_id, "Tablet"))).await?;
    assert_eq!(info.shared_device_data.unwrap().unwrap().version, 9);
    Ok(())
}

/// At most 6 chat server connections per group (Cloudflare's outbound connection limit; a
/// group has 8 slots): the 7th and 8th devices' CSP logins wait; when one of the six leaves, the
/// 7th gets its socket and logs in; the 8th, still waiting after 15 s, is closed with 4001. The
/// others keep their sessions and the group keeps reflecting.
async fn csp_sockets(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let mut six = Vec::new();
    for n in 0..6 {
        six.push(csp_device(fx, &id, &format!("socket {n}"), n == 0).await?);
    }
    let mut waiting = Vec::new();
    for name in ["socket 6", "socket 7"] {
        let config = id.csp_device_config(random_device_id(), random_device_id(), name);
        let (device, _) = online(fx, &id, name, config).await?;
        waiting.push(device);
    }
    let login = |e: &tandem_shared::device::Event| {
        matches!(e, tandem_shared::device::Event::CspEstablished(_)).then_some(())
    };
    for device in &mut waiting {
        let early = device
            .wait_for("CSP login-ack", Duration::from_secs(2), login)
            .await;
        assert!(early.is_err(), "a 7th chat server connection opened");
    }
    let started = Instant::now();
    six.remove(5).disconnect().await;
    waiting[0]
        .wait_for(
            "CSP login-ack after a socket freed",
            Duration::from_secs(10),
            login,
        )
        .await?;
    let mut eighth = waiting.remove(1);
    let code = eighth.closed(Duration::from_secs(25)).await?;
    assert_eq!(code.as_u16(), 4001, "the 8th, never given a socket");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "closed before its wait ran out"
    );
    // The group still reflects, and the first six's sessions are intact.
    let reflect = six[1].reflect(&tagged(1, 0)).await?;
    six[1].reflect_acked(reflect).await?;
    let got = six[2].receive_reflected(1, true).await?;
    assert_eq!(tag_of(&got[0].envelope).0, 1);
    Ok(())
}

/// At most 16 connections of a group in their handshake (`GroupConfig::max_handshakes`): the
/// 17th is closed at once with 1013 (try again later) and gets no ServerHello; the group's
/// devices keep reflecting, and once the half-open ones are gone a device logs in again.
async fn handshake_cap(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (mut a, _) = online(fx, &id, "a", id.device_config(random_device_id(), "a")).await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(random_device_id(), "b")).await?;
    let max = GroupConfig::default().max_handshakes;
    let mut half_open = Vec::new();
    for n in 0..max {
        let mut raw = RawSocket::connect(&url(fx, &id), format!("half-open {n}")).await?;
        let hello = raw.next_binary(Duration::from_secs(20)).await?;
        assert_eq!(hello.first(), Some(&0x10), "ServerHello for half-open {n}");
        half_open.push(raw);
    }
    let mut over = RawSocket::connect(&url(fx, &id), "one too many").await?;
    assert_eq!(over.close_code(CLOSE_WAIT).await?, 1013);

    let reflect = a.reflect(&tagged(1, 0)).await?;
    a.reflect_acked(reflect).await?;
    let got = b.receive_reflected(1, true).await?;
    assert_eq!(tag_of(&got[0].envelope).0, 1);

    // Dropped without a close frame: a client's clean close makes workerd log "Uncaught Error:
    // Network connection lost." (docs/testing.md), which `no_crash_logged` counts.
    drop(half_open);
    let c_id = random_device_id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Device::connect_online(&url(fx, &id), "c", id.device_config(c_id, "c")).await {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                eprintln!("c not yet in ({err}); the half-open closes are still on their way");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// A burst of large reflects (48 × ≈ 60 KiB, written without waiting): under the Worker the
/// frames gathered for one coalesced turn pass 1 MiB, so the turn is handled at once
/// (`turnsCut` in the development stats) rather than piling up in wasm memory until the timer;
/// every reflect is acked and reaches the sibling, in order.
async fn turn_bound(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (mut a, _) = online(fx, &id, "a", id.device_config(random_device_id(), "a")).await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(random_device_id(), "b")).await?;
    let big = big_tagged(48);
    let ids = a.reflect_all(&big).await?;
    a.reflect_acks(&ids).await?;
    let got = b.receive_reflected(big.len(), true).await?;
    assert_eq!(tags_of(&got), (0..48).collect::<Vec<u64>>());
    if let Some(field) = dev_stats(fx, &id).await? {
        eprintln!(
            "turn_bound: frames {} together {} cut {}",
            field("frames"),
            field("framesReadyTogether"),
            field("turnsCut")
        );
        assert!(
            field("turnsCut") >= 1,
            "no turn passed 1 MiB: the bound was never exercised"
        );
    }
    Ok(())
}

/// Under the Worker: a group whose devices are idle hibernates — the runtime drops the object
/// (workerd: 10 s after it stopped keeping itself awake) while both device sockets stay
/// connected — and, woken by the next frame, goes on where it stopped: no reconnect, the leader
/// stays the leader, the next reflect reaches the sibling once, its ack is known, a new device
/// joins. The keepalive text frame is answered by the runtime; any other text is still 4010.
async fn hibernation(fx: &mut Fixture) -> ScenarioResult {
    if !matches!(fx.mediator, Mediator::Wrangler(_)) {
        // The state machine's side is unit-tested in `shared` (mediator::hibernation).
        return Ok(());
    }
    let id = fx.identity().await?;
    let (mut a, _) = online(fx, &id, "a", id.device_config(random_device_id(), "a")).await?;
    a.promoted().await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(random_device_id(), "b")).await?;
    let reflect = a.reflect(&tagged(1, 0)).await?;
    a.reflect_acked(reflect).await?;
    let got = b.receive_reflected(1, true).await?;
    assert_eq!(tag_of(&got[0].envelope).0, 1);
    let Some(field) = dev_stats(fx, &id).await? else {
        return Ok(());
    };
    let (constructed, resumed) = (field("objectsConstructed"), field("connectionsResumed"));
    assert_eq!(field("hibernation"), 1, "hibernation is on by default");

    // Idle: the acks are stored after one keep-awake tick (2 s), workerd evicts 10 s later.
    tokio::time::sleep(Duration::from_secs(16)).await;

    let reflect = a.reflect(&tagged(2, 0)).await?;
    a.reflect_acked(reflect).await?;
    let got = b.receive_reflected(1, true).await?;
    assert_eq!(tag_of(&got[0].envelope).0, 2, "the next one, once");
    b.sync_barrier().await?;
    let field = dev_stats(fx, &id).await?.expect("stats");
    eprintln!(
        "hibernation: objects constructed {constructed} -> {}, connections resumed {resumed} -> {}",
        field("objectsConstructed"),
        field("connectionsResumed")
    );
    assert!(
        field("objectsConstructed") > constructed,
        "the object was never dropped from memory"
    );
    assert!(
        field("connectionsResumed") >= resumed + 2,
        "both sockets resumed from their snapshots"
    );
    no_promotion(&mut a).await?;
    no_promotion(&mut b).await?;
    let (mut c, _) = online(fx, &id, "c", id.device_config(random_device_id(), "c")).await?;
    no_promotion(&mut c).await?;
    let reflect = c.reflect(&tagged(3, 0)).await?;
    c.reflect_acked(reflect).await?;
    for device in [&mut a, &mut b] {
        let got = device.receive_reflected(1, true).await?;
        assert_eq!(tag_of(&got[0].envelope).0, 3);
    }

    // A held lock lives only in memory: the object keeps itself awake while it is held, and
    // the transaction's staged reflect survives the same idle time.
    let constructed = field("objectsConstructed");
    assert_eq!(
        a.begin_transaction(Scope::ContactSync, 60).await?,
        TransactionStart::Begun
    );
    let staged = a.reflect(&tagged(4, 0)).await?;
    a.reflect_acked(staged).await?;
    tokio::time::sleep(Duration::from_secs(16)).await;
    a.commit_transaction().await?;
    for device in [&mut b, &mut c] {
        let got = device.receive_reflected(1, true).await?;
        assert_eq!(
            tag_of(&got[0].envelope).0,
            4,
            "the staged reflect, committed"
        );
    }
    let field = dev_stats(fx, &id).await?.expect("stats");
    assert_eq!(
        field("objectsConstructed"),
        constructed,
        "the object was dropped while it held the lock"
    );

    let mut raw = RawSocket::connect(&url(fx, &id), "keepalive").await?;
    let hello = raw.next_binary(Duration::from_secs(20)).await?;
    assert_eq!(hello.first(), Some(&0x10), "ServerHello");
    raw.send_text("ping").await?;
    assert_eq!(raw.next_text(Duration::from_secs(5)).await?, "pong");
    raw.send_text("hello").await?;
    assert_eq!(raw.close_code(CLOSE_WAIT).await?, 4010, "other text");
    Ok(())
}

/// CSP on demand (docs/protocol.md): a device that negotiated it is given a push URL, closes its
/// chat server connection (under the Worker the object then hibernates with the device still
/// connected), a POST to the push URL wakes it (`Wake`), and it logs in again through the proxy.
/// A forged token or a GET is answered 404/405 and wakes nobody.
async fn csp_on_demand(fx: &mut Fixture) -> ScenarioResult {
    let addr = match &fx.mediator {
        Mediator::Wrangler(worker) => worker.http_addr(),
        Mediator::Local(local) => local.ws_base().replace("ws://", ""),
    };
    let wrangler = matches!(fx.mediator, Mediator::Wrangler(_));
    let id = fx.identity().await?;
    let mut config = id.csp_device_config(random_device_id(), random_device_id(), "a");
    config.tandem_features = TANDEM_FEATURE_CSP_ON_DEMAND;
    let (mut a, info) = online(fx, &id, "a", config).await?;
    assert_eq!(info.reflection_queue_length, 0);
    let url = a
        .wait_for("PushUrl", Duration::from_secs(10), |e| match e {
            Event::PushUrl(url) => Some(url.clone()),
            _ => None,
        })
        .await?;
    let path = url
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("push URL {url} is not on {addr}"))
        .to_owned();
    assert!(path.starts_with("/push/") && url.len() <= 255, "{url}");
    assert!(
        !url.contains(&tandem_shared::encoding::hex_encode(&id.keys.dgpk_public.0)),
        "the token hides the group id"
    );
    a.csp_established().await?;
    a.promoted().await?;
    // Registered as a push token of Tandem's type, as the app core does after every login.
    a.csp_send(&CspPayload::SetPushNotificationToken(
        PushToken::new(TANDEM_PUSH_TOKEN_TYPE, url.clone().into_bytes()).expect("≤ 255 bytes"),
    ))
    .await?;

    // Forged and wrong-method pushes wake nobody.
    let forged = format!("/push/{}", "ab".repeat(80));
    let answer = http_request(&addr, "POST", &forged, None, Duration::from_secs(10)).await?;
    assert_eq!(answer.status, 404, "{answer:?}");
    let answer = http_request(&addr, "GET", &path, None, Duration::from_secs(10)).await?;
    assert_eq!(answer.status, 405, "{answer:?}");

    a.close_csp().await?;
    let constructed = match dev_stats(fx, &id).await? {
        Some(field) => {
            assert_eq!(field("push"), 1, "the fixture's Worker has a push key");
            field("objectsConstructed")
        }
        None => 0,
    };
    a.expect_none(QUIET, "no Wake without a push", |e| {
        matches!(e, Event::Wake)
    })
    .await?;

    // With its chat server connection closed the group may hibernate (the Worker's).
    if wrangler {
        tokio::time::sleep(Duration::from_secs(16)).await;
    }
    // Another identity writes: the message waits at the chat server, nobody of `id` receives,
    // so the chat server POSTs to the URL `a` registered, and the mediator wakes `a`.
    let y = fx.identity().await?;
    let mut y1 = csp_device(fx, &y, "y1", true).await?;
    let message_id = OsRng.next_u64();
    let sealed = seal_message_with_nonce(
        &y.client_key,
        &MessageToSeal {
            sender: y.identity,
            receiver: id.identity,
            receiver_public_key: id.client_key.public_key(),
            message_id,
            created_at_ms: now_ms(),
            flags: MessageFlags::SEND_PUSH,
            nickname: None,
            message_type: E2eMessageType::TEXT,
            body: b"while you slept",
        },
        &random_nonce(&mut OsRng),
        &mut OsRng,
    )?;
    let sent_at = Instant::now();
    y1.csp_send(&CspPayload::OutgoingMessage(sealed)).await?;
    a.wait_for("Wake", Duration::from_secs(10), |e| {
        matches!(e, Event::Wake).then_some(())
    })
    .await?;
    eprintln!(
        "csp_on_demand: message sent -> Wake in {:?}",
        sent_at.elapsed()
    );
    if let Some(field) = dev_stats(fx, &id).await? {
        assert!(
            field("objectsConstructed") > constructed,
            "the object hibernated while the device stayed connected"
        );
        assert_eq!(field("pushesWoken"), 1);
    }

    // The device logs in again through the proxy, unblocks and gets the message.
    a.open_csp().await?;
    a.csp_send(&CspPayload::UnblockIncomingMessages).await?;
    let CspPayload::IncomingMessage(incoming) = a.csp_payload("the waiting message").await? else {
        panic!("expected the incoming message");
    };
    assert_eq!(incoming.message_id, message_id);
    eprintln!(
        "csp_on_demand: message sent -> at the woken device in {:?}",
        sent_at.elapsed()
    );
    a.csp_send(&CspPayload::IncomingMessageAck(MessageAck {
        identity: y.identity,
        message_id,
    }))
    .await?;
    assert_eq!(
        a.csp_payload("queue-send-complete").await?,
        CspPayload::QueueSendComplete
    );
    // Open again: a push now wakes nobody.
    let answer = http_request(&addr, "POST", &path, None, Duration::from_secs(10)).await?;
    assert_eq!(answer.status, 204);
    a.expect_none(QUIET, "no Wake while open", |e| matches!(e, Event::Wake))
        .await?;
    if wrangler {
        // The Worker limits pushes per group (30 a minute): a token holder cannot start the
        // group's object at will. 61 in a row pass at most two of wrangler's one-minute
        // windows, so one of them is refused whenever the burst starts.
        let mut statuses = Vec::new();
        for _ in 0..61 {
            let answer = http_request(&addr, "POST", &path, None, Duration::from_secs(10)).await?;
            statuses.push(answer.status);
            if answer.status == 429 {
                break;
            }
        }
        assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 204 || *s == 429),
            "{statuses:?}"
        );
    }
    Ok(())
}

/// Under the Worker: a group object stores nothing until a device completes its handshake (a
/// peer that only opens a WebSocket with some group id leaves no tables behind), and empties its
/// storage when the last slot is gone; a device that comes later starts the group afresh.
async fn storage_lifecycle(fx: &mut Fixture) -> ScenarioResult {
    if !matches!(fx.mediator, Mediator::Wrangler(_)) {
        return Ok(());
    }
    let id = fx.identity().await?;
    let mut raw = RawSocket::connect(&url(fx, &id), "no hello").await?;
    let hello = raw.next_binary(Duration::from_secs(20)).await?;
    assert_eq!(hello.first(), Some(&0x10), "ServerHello");
    raw.close(1000).await;
    let field = dev_stats(fx, &id).await?.expect("stats");
    eprintln!(
        "storage_lifecycle: after a handshake-less socket: stored {} database {} B",
        field("stored"),
        field("databaseBytes")
    );
    assert_eq!(field("stored"), 0, "tables created before a ClientHello");
    assert_eq!(field("alarmAt"), 0, "an alarm set before a ClientHello");

    let a_id = random_device_id();
    let (mut a, _) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    let field = dev_stats(fx, &id).await?.expect("stats");
    let created_bytes = field("databaseBytes");
    assert_eq!((field("stored"), field("slots")), (1, 1));
    a.drop_device(a_id).await?;
    assert_eq!(a.closed(CLOSE_WAIT).await?.as_u16(), 4113);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let field = dev_stats(fx, &id).await?.expect("stats");
        if field("stored") == 0 {
            eprintln!(
                "storage_lifecycle: database {created_bytes} B with one slot, {} B once it went",
                field("databaseBytes")
            );
            assert_eq!(field("slots"), 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "storage kept after the last slot went"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut a, info) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    assert_eq!(info.reflection_queue_length, 0);
    let (mut b, _) = online(fx, &id, "b", id.device_config(random_device_id(), "b")).await?;
    let reflect = a.reflect(&tagged(1, 0)).await?;
    a.reflect_acked(reflect).await?;
    let got = b.receive_reflected(1, true).await?;
    assert_eq!(tag_of(&got[0].envelope).0, 1);
    let field = dev_stats(fx, &id).await?.expect("stats");
    assert_eq!((field("stored"), field("slots")), (1, 2));
    Ok(())
}

/// A device that stops reading while a sibling floods the group with ephemeral frames (150 of
/// ≈ 60 KiB) is closed with 4009 once 8 MiB were sent to it since its last frame
/// (`GroupConfig::max_unanswered_bytes`: a Durable Object's send has no backpressure, so what it
/// does not read would pile up in the isolate); the sender and a device that reads (and sends
/// now and then) are unaffected, and the group goes on.
async fn not_reading(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (mut a, _) = online(fx, &id, "a", id.device_config(random_device_id(), "a")).await?;
    let (mut silent, _) = online(
        fx,
        &id,
        "silent",
        id.device_config(random_device_id(), "silent"),
    )
    .await?;
    let (mut reader, _) = online(
        fx,
        &id,
        "reader",
        id.device_config(random_device_id(), "reader"),
    )
    .await?;
    let big = big_tagged(150);
    for chunk in big.chunks(10) {
        for envelope in chunk {
            a.reflect_ephemeral(envelope).await?;
        }
        let got = reader.receive_reflected(chunk.len(), true).await?;
        assert!(got.iter().all(|r| r.ephemeral));
        // Ephemeral frames are not acked (spec §5): a device that reads shows it by what it
        // sends, here a GetDevicesInfo round trip.
        reader.sync_barrier().await?;
    }
    let code = silent.closed(CLOSE_WAIT).await?;
    assert_eq!(code.as_u16(), 4009, "the device that did not read");
    let reflect = a.reflect(&tagged(1_000, 0)).await?;
    a.reflect_acked(reflect).await?;
    let got = reader.receive_reflected(1, true).await?;
    assert_eq!(tag_of(&got[0].envelope).0, 1_000);
    Ok(())
}

/// CSP device with its leader duties: login, and `unblock-incoming-messages` once leader.
async fn csp_device(
    fx: &Fixture,
    id: &Identity,
    name: &str,
    leader: bool,
) -> Result<Device, HarnessError> {
    let config = id.csp_device_config(random_device_id(), random_device_id(), name);
    let (mut device, _) = online(fx, id, name, config).await?;
    device.csp_established().await?;
    if leader {
        device.promoted().await?;
        device
            .csp_send(&CspPayload::UnblockIncomingMessages)
            .await?;
        let first = device.csp_payload("queue-send-complete").await?;
        assert_eq!(
            first,
            CspPayload::QueueSendComplete,
            "{name}: nothing queued yet"
        );
    }
    Ok(device)
}

/// Protocol version 23 leniencies of the URL (docs/protocol.md): a device whose group id starts
/// below 0x10 connects with a one-digit prefix and server group "1" while the chat server is
/// configured as group "01"; it gets its group (ServerInfo, queue dry) and reaches the chat
/// server through the proxy (CSP login-ack, which now carries the server's time).
async fn lenient_urls(fx: &mut Fixture) -> ScenarioResult {
    let mut id = fx.identity().await?;
    // One group id in 16 starts below 0x10; identities are cheap on the local directory.
    for _ in 0..400 {
        if id.group_id()[0] < 0x10 {
            break;
        }
        id = fx.identity().await?;
    }
    assert!(
        id.group_id()[0] < 0x10,
        "no group id below 0x10 in 400 tries"
    );
    assert_eq!(id.server_group, "01", "the fixture's chat server group");
    id.server_group = "1".into();
    let first = id.group_id()[0];
    let url = url(fx, &id).replacen(&format!("/{first:02x}/"), &format!("/{first:x}/"), 1);
    assert!(url.contains(&format!("/{first:x}/")), "{url}");
    let config = id.csp_device_config(random_device_id(), random_device_id(), "lenient");
    let (mut device, info) = Device::connect_online(&url, "lenient", config).await?;
    if info.reflection_queue_length == 0 {
        device.queue_dry().await?;
    }
    let ack = device
        .wait_for("CSP login-ack", Duration::from_secs(30), |e| match e {
            Event::CspEstablished(ack) => Some(*ack),
            _ => None,
        })
        .await?;
    let now = now_ms();
    assert!(
        ack.server_time_ms.abs_diff(now) < 60_000,
        "login-ack carries the server's time: {} vs {now}",
        ack.server_time_ms
    );
    device.disconnect().await;
    Ok(())
}

/// End to end through the proxy (spec §9.6): X's non-leader device sends Y a text; X's other
/// device sees the reflected OutgoingMessage; Y's leader receives it from the chat server,
/// reflects IncomingMessage, Y's other device sees it, and the leader's ack reaches the chat
/// server (the next leader gets nothing again).
async fn end_to_end(fx: &mut Fixture) -> ScenarioResult {
    let x = fx.identity().await?;
    let y = fx.identity().await?;
    let directory = fx.chat.directory();
    let mut x1 = csp_device(fx, &x, "x1", true).await?;
    let mut x2 = csp_device(fx, &x, "x2", false).await?;
    let mut y1 = csp_device(fx, &y, "y1", true).await?;
    let mut y2 = csp_device(fx, &y, "y2", false).await?;
    no_promotion(&mut x2).await?;

    let text = "Hello from X's second device";
    let message_id = OsRng.next_u64();
    let created_at = now_ms();
    let nonce = random_nonce(&mut OsRng);
    let y_key = lookup_public_key(&directory, &y.id_str()).await?;
    assert_eq!(y_key, y.client_key.public_key());

    // 1. x2 reflects the OutgoingMessage with the nonce drawn in advance.
    let outgoing = OutgoingMessage {
        conversation: Some(contact(&y.id_str())),
        message_id,
        created_at,
        r#type: CspE2eMessageType::Text.into(),
        body: text.as_bytes().to_vec(),
        nonces: vec![nonce.to_vec()],
        ..Default::default()
    };
    let reflect = x2
        .reflect(&Envelope {
            content: Some(Content::OutgoingMessage(outgoing.clone())),
            ..Default::default()
        })
        .await?;
    x2.reflect_acked(reflect).await?;
    // 2. … sends it to Y and waits for the chat server's ack …
    let sealed = seal_message_with_nonce(
        &x.client_key,
        &MessageToSeal {
            sender: x.identity,
            receiver: y.identity,
            receiver_public_key: y_key,
            message_id,
            created_at_ms: created_at,
            flags: MessageFlags::SEND_PUSH,
            nickname: Some("X"),
            message_type: E2eMessageType::TEXT,
            body: text.as_bytes(),
        },
        &nonce,
        &mut OsRng,
    )?;
    x2.csp_send(&CspPayload::OutgoingMessage(sealed)).await?;
    assert_eq!(
        x2.csp_payload("outgoing message-ack").await?,
        CspPayload::OutgoingMessageAck(MessageAck {
            identity: y.identity,
            message_id
        })
    );
    // 3. … and reflects `sent`.
    let sent = OutgoingMessageUpdate {
        updates: vec![outgoing_message_update::Update {
            conversation: Some(contact(&y.id_str())),
            message_id,
            update: Some(outgoing_message_update::update::Update::Sent(
                outgoing_message_update::Sent {},
            )),
        }],
    };
    let reflect = x2
        .reflect(&Envelope {
            content: Some(Content::OutgoingMessageUpdate(sent.clone())),
            ..Default::default()
        })
        .await?;
    x2.reflect_acked(reflect).await?;

    // x1 sees both, from x2.
    let got = x1.receive_reflected(2, true).await?;
    assert_eq!(got[0].envelope.device_id, x2.device_id());
    assert_eq!(
        got[0].envelope.content,
        Some(Content::OutgoingMessage(outgoing))
    );
    assert_eq!(
        got[1].envelope.content,
        Some(Content::OutgoingMessageUpdate(sent))
    );

    // 4. y1 (leader) receives it from the chat server and opens it.
    let CspPayload::IncomingMessage(incoming) = y1.csp_payload("incoming message").await? else {
        panic!("expected an incoming message");
    };
    assert_eq!(incoming.nonce, nonce, "the nonce x2 reflected");
    let x_key = lookup_public_key(&directory, &x.id_str()).await?;
    let opened = open_message(&y.client_key, &x_key, &incoming)?;
    assert_eq!(opened.message_type, E2eMessageType::TEXT);
    assert_eq!(opened.body, text.as_bytes());
    assert_eq!(opened.created_at_ms, created_at);
    // 5. … reflects IncomingMessage, waits for the ReflectAck …
    let reflected = IncomingMessage {
        sender_identity: x.id_str(),
        message_id,
        created_at: opened.created_at_ms,
        r#type: CspE2eMessageType::Text.into(),
        body: opened.body.clone(),
        nonce: incoming.nonce.to_vec(),
    };
    let reflect = y1
        .reflect(&Envelope {
            content: Some(Content::IncomingMessage(reflected.clone())),
            ..Default::default()
        })
        .await?;
    y1.reflect_acked(reflect).await?;
    // y2 sees it.
    let got = y2.receive_reflected(1, true).await?;
    assert_eq!(got[0].envelope.device_id, y1.device_id());
    assert_eq!(
        got[0].envelope.content,
        Some(Content::IncomingMessage(reflected))
    );
    // 6. … and only then acks to the chat server.
    y1.csp_send(&CspPayload::IncomingMessageAck(MessageAck {
        identity: x.identity,
        message_id,
    }))
    .await?;
    // An echo round trip: the chat server has handled the ack (frames are handled in order).
    y1.csp_send(&CspPayload::EchoRequest(b"after the ack".to_vec()))
        .await?;
    assert_eq!(
        y1.csp_payload("echo-response").await?,
        CspPayload::EchoResponse(b"after the ack".to_vec())
    );
    // The ack counted: when y1 leaves, y2 leads, unblocks, and the queue is empty.
    y1.disconnect().await;
    y2.promoted().await?;
    y2.csp_send(&CspPayload::UnblockIncomingMessages).await?;
    assert_eq!(
        y2.csp_payload("queue-send-complete").await?,
        CspPayload::QueueSendComplete,
        "the acked message is not delivered again"
    );
    x1.expect_none(QUIET, "nothing else for X", |e| {
        matches!(e, Event::Reflected { .. } | Event::CspPayload(_))
    })
    .await?;
    for device in [x1, x2, y2] {
        device.disconnect().await;
    }
    metadata_clean(fx, &[&x, &y], &[text.as_bytes()])
}

/// Two identities with two devices each have chatted: the mediator's storage (the Durable
/// Objects' SQLite files, WAL included) and both servers' logs name neither identity, nor its
/// public key (raw, hex or base64), nor any plaintext (DESIGN §1 and §3 "Metadata"). The chat
/// server's own database (`chat-data/`) is left out: it is the directory, whose job is to map
/// identities to keys, and holds only sealed messages.
fn metadata_clean(fx: &Fixture, identities: &[&Identity], plaintexts: &[&[u8]]) -> ScenarioResult {
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for id in identities {
        let name = id.id_str();
        let key = *id.client_key.public_key().as_bytes();
        needles.push((format!("identity {name}"), name.clone().into_bytes()));
        needles.push((format!("{name}'s public key"), key.to_vec()));
        for (form, text) in [
            ("hex", tandem_shared::encoding::hex_encode(&key)),
            (
                "HEX",
                tandem_shared::encoding::hex_encode(&key).to_uppercase(),
            ),
            ("base64", tandem_shared::encoding::base64_encode(&key)),
        ] {
            needles.push((format!("{name}'s public key in {form}"), text.into_bytes()));
        }
    }
    for text in plaintexts {
        needles.push(("a plaintext".to_owned(), text.to_vec()));
    }
    let mut files = Vec::new();
    let mut dirs = vec![fx.scratch().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == "chat-data") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let sqlite = files
        .iter()
        .filter(|p| p.to_string_lossy().contains(".sqlite"))
        .count();
    if fx.mediator_kind() == "wrangler dev" && sqlite == 0 {
        return Err(format!(
            "no Durable Object SQLite file under {}",
            fx.scratch().display()
        )
        .into());
    }
    for file in &files {
        // An idle object's SQLite closes when workerd drops it (hibernation), removing its
        // `-wal`/`-shm` files: what they held is in the database file, which is read too.
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        for (what, needle) in &needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                return Err(format!("{} holds {what}", file.display()).into());
            }
        }
    }
    eprintln!(
        "[{}] metadata: {} files ({sqlite} SQLite) hold no identity, key or plaintext",
        fx.mediator_kind(),
        files.len()
    );
    Ok(())
}

/// The mediator restarts (or, `crash`, is killed and started again) in the middle of a reflect
/// stream: afterwards no envelope whose ReflectAck arrived is missing, and none comes again after
/// an ack the mediator confirmed.
async fn restart(fx: &mut Fixture, crash: bool) -> ScenarioResult {
    const BURST: u64 = 1_000;
    let id = fx.identity().await?;
    let (a_id, b_id) = (random_device_id(), random_device_id());
    let (mut a, _) = online(fx, &id, "a", id.device_config(a_id, "a")).await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(b_id, "b")).await?;

    // Entries are (tag, attempt); a re-reflects what had no ReflectAck as attempt 1.
    let mut stored: BTreeSet<(u64, u32)> = BTreeSet::new();
    let ids = a.reflect_all(&tags(150, 0)).await?;
    a.reflect_acks(&ids).await?;
    stored.extend((0..150).map(|t| (t, 0)));

    // b acks 100 and confirms them with a round trip, acks 20 more without confirming.
    let mut delivered_before: Vec<(u64, u32)> = Vec::new();
    let first = b.receive_reflected(100, true).await?;
    b.sync_barrier().await?;
    let confirmed: BTreeSet<(u64, u32)> = first.iter().map(|r| tag_of(&r.envelope)).collect();
    delivered_before.extend(first.iter().map(|r| tag_of(&r.envelope)));
    let more = b.receive_reflected(20, true).await?;
    delivered_before.extend(more.iter().map(|r| tag_of(&r.envelope)));

    // a pipelines 1 000 more; the mediator goes down once the 100th is acked, the rest in flight.
    let in_flight = a.reflect_all(&tags(BURST, 150)).await?;
    let mut acked_ids = BTreeSet::from([in_flight[99]]);
    a.reflect_acked(in_flight[99]).await?;
    let took = fx.restart_mediator(crash).await?;
    eprintln!("  restart (crash: {crash}): mediator back after {took:.1?}");
    // Whatever ReflectAcks arrived before the connection ended are stored.
    a.closed(CLOSE_WAIT).await?;
    b.closed(CLOSE_WAIT).await?;
    acked_ids.extend(a.take_backlog().into_iter().filter_map(|e| match e {
        Event::ReflectAcked { reflect_id, .. } => Some(reflect_id),
        _ => None,
    }));
    for (i, reflect_id) in in_flight.iter().enumerate() {
        if acked_ids.contains(reflect_id) {
            stored.insert((150 + i as u64, 0));
        }
    }
    eprintln!(
        "  restart: {} of {BURST} in-flight reflects were acked before the restart",
        acked_ids.len()
    );
    drop(a);
    drop(b);

    let (mut a, _) = online(fx, &id, "a (after)", existing(id.device_config(a_id, "a"))).await?;
    let missing: Vec<Envelope> = (150..150 + BURST)
        .filter(|&t| !stored.contains(&(t, 0)))
        .map(|t| tagged(t, 1))
        .collect();
    let ids = a.reflect_all(&missing).await?;
    a.reflect_acks(&ids).await?;
    stored.extend(missing.iter().map(tag_of));

    let (mut b, info) = Device::connect_online(
        &url(fx, &id),
        "b (after)",
        existing(id.device_config(b_id, "b")),
    )
    .await?;
    let after = b
        .receive_reflected(info.reflection_queue_length as usize, true)
        .await?;
    b.queue_dry().await?;
    b.sync_barrier().await?;
    let after: Vec<(u64, u32)> = after.iter().map(|r| tag_of(&r.envelope)).collect();

    let redelivered = after
        .iter()
        .filter(|e| delivered_before.contains(e))
        .count();
    let unacked_but_stored = after.iter().filter(|e| !stored.contains(e)).count();
    eprintln!(
        "  restart: {} entries after the restart ({redelivered} delivered before with an \
         unconfirmed ack, {unacked_but_stored} stored without a ReflectAck reaching a)",
        after.len()
    );
    let again: Vec<_> = after.iter().filter(|e| confirmed.contains(e)).collect();
    assert!(
        again.is_empty(),
        "delivered again after a confirmed ack: {again:?}"
    );
    let seen: BTreeSet<(u64, u32)> = delivered_before.iter().chain(&after).copied().collect();
    let lost: Vec<_> = stored.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "acked by the mediator but never delivered: {lost:?}"
    );
    // Queue order: attempt 0 by tag, then attempt 1 by tag; no entry twice on one connection.
    let order = |&(tag, attempt): &(u64, u32)| (attempt, tag);
    assert!(
        after.windows(2).all(|w| order(&w[0]) < order(&w[1])),
        "out of order or duplicated after the restart: {after:?}"
    );
    b.disconnect().await;
    let (mut b, info) = online(fx, &id, "b (last)", existing(id.device_config(b_id, "b"))).await?;
    assert_eq!(
        info.reflection_queue_length, 0,
        "everything acked stays acked"
    );
    no_reflected(&mut b, "after acking everything").await?;
    Ok(())
}

/// Bad input gets its close code; the other devices keep working and their queues are intact.
async fn bad_input(fx: &mut Fixture) -> ScenarioResult {
    let id = fx.identity().await?;
    let (c_id, m_id) = (random_device_id(), random_device_id());
    let (mut a, _) = online(fx, &id, "a", id.device_config(random_device_id(), "a")).await?;
    let (mut b, _) = online(fx, &id, "b", id.device_config(random_device_id(), "b")).await?;
    let (c, _) = online(fx, &id, "c", id.device_config(c_id, "c")).await?;
    c.disconnect().await;
    let mut next_tag = 0;
    let mut queued_for_c = Vec::new();

    // One reflect a → b after each bad input: the group still works.
    macro_rules! group_works {
        () => {{
            let reflect = a.reflect(&tagged(next_tag, 0)).await?;
            a.reflect_acked(reflect).await?;
            let got = b.receive_reflected(1, true).await?;
            assert_eq!(tag_of(&got[0].envelope).0, next_tag);
            queued_for_c.push(next_tag);
            next_tag += 1;
        }};
    }
    group_works!();

    // Mallory: a member device (it holds the key) that misbehaves after its handshake.
    let mut first = true;
    let mut mallory = |csp: bool| {
        let mut config = if csp {
            id.csp_device_config(m_id, random_device_id(), "mallory")
        } else {
            id.device_config(m_id, "mallory")
        };
        if !std::mem::take(&mut first) {
            config.expected_slot_state = DeviceSlotState::Existing;
        }
        config
    };
    let mut reflect_header = vec![0x80, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0];
    let cases: Vec<(&str, Message, u16)> = vec![
        ("text frame", Message::text("hello"), 4010),
        (
            "truncated container",
            Message::binary(vec![0x80, 0, 0]),
            4010,
        ),
        (
            "truncated Reflect",
            Message::binary(vec![0x80, 0, 0, 0, 8, 0]),
            4010,
        ),
        (
            "oversize container",
            {
                reflect_header.resize(65_537, 0);
                Message::binary(reflect_header.clone())
            },
            4010,
        ),
        ("unknown type", Message::binary(vec![0x99, 0, 0, 0]), 4010),
        (
            "server-only type",
            Message::binary([vec![0x81, 0, 0, 0], vec![0; 16]].concat()),
            4010,
        ),
        (
            "ack for an unknown id",
            Message::binary(vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0xad, 0xde, 0, 0]),
            4012,
        ),
    ];
    for (what, message, code) in cases {
        let (mut m, _) = online(fx, &id, &format!("mallory ({what})"), mallory(false)).await?;
        m.send_raw(message).await?;
        assert_eq!(m.closed(CLOSE_WAIT).await?.as_u16(), code, "{what}");
        group_works!();
    }

    // An 8 MiB frame (Cloudflare takes up to 32 MiB; the local mediator's WebSocket up to
    // 16 MiB): refused by its length, 4010, and under the Worker never copied into the isolate's
    // wasm memory, which would keep the 8 MiB for good.
    let before = wasm_memory(fx, &id).await?;
    let (mut m, _) = online(fx, &id, "mallory (8 MiB frame)", mallory(false)).await?;
    m.send_raw(Message::binary(vec![0x80; 8 << 20])).await?;
    assert_eq!(m.closed(CLOSE_WAIT).await?.as_u16(), 4010, "8 MiB frame");
    group_works!();
    if let (Some(before), Some(after)) = (before, wasm_memory(fx, &id).await?) {
        assert!(
            after < before + (1 << 20),
            "wasm memory grew from {before} to {after} B for a refused 8 MiB frame"
        );
    }

    // Garbage on the proxy channel: the chat server refuses it, the mediator closes with 4000.
    let (mut m, _) = online(fx, &id, "mallory (proxy garbage)", mallory(true)).await?;
    m.csp_established().await?;
    let mut garbage = vec![0x00, 0, 0, 0, 64, 0];
    garbage.extend((0..64).map(|_| (OsRng.next_u32() & 0xff) as u8));
    m.send_raw(Message::binary(garbage)).await?;
    assert_eq!(m.closed(CLOSE_WAIT).await?.as_u16(), 4000, "proxy garbage");
    group_works!();

    // Frames before the handshake, on bare sockets: 4010, and no slot.
    for (what, frame) in [
        ("Reflect before ClientHello", {
            let mut f = vec![0x80, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0];
            f.extend([0_u8; 64]);
            f
        }),
        ("GetDevicesInfo before ClientHello", vec![0x30, 0, 0, 0]),
        (
            "ReflectedAck before ClientHello",
            vec![0x83, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        ),
    ] {
        let mut raw = RawSocket::connect(&url(fx, &id), what).await?;
        let hello = raw.next_binary(Duration::from_secs(20)).await?;
        assert_eq!(hello.first(), Some(&0x10), "{what}: ServerHello first");
        raw.send_binary(frame).await?;
        assert_eq!(raw.close_code(CLOSE_WAIT).await?, 4010, "{what}");
        group_works!();
    }

    // Everything intact: c gets every entry in order; the slots are a, b, c and mallory.
    let (mut c, info) =
        Device::connect_online(&url(fx, &id), "c", existing(id.device_config(c_id, "c"))).await?;
    assert_eq!(info.reflection_queue_length as usize, queued_for_c.len());
    let got = c.receive_reflected(queued_for_c.len(), true).await?;
    assert_eq!(tags_of(&got), queued_for_c);
    c.queue_dry().await?;
    let slots = a.devices_info().await?;
    assert_eq!(slots.len(), 4, "{slots:?}");
    Ok(())
}
