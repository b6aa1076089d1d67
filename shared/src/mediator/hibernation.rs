//! What survives when the runtime drops the group from memory while its device WebSockets stay
//! connected (Cloudflare's WebSocket Hibernation, `docs/mediator.md` "Hibernation").
//!
//! A connection can be rebuilt after hibernation only if everything the group knows about it is
//! either in the store or in a few numbers: authenticated, no chat server connection, nothing in
//! flight, nothing held back, no acks waiting to be stored, not holding the lock, its queue
//! delivered. Those numbers are its [`ConnSnapshot`], which the driver keeps beside the socket
//! (Cloudflare's `serializeAttachment`) in the [`encode_attachment`] format. A connection that
//! cannot be rebuilt is marked as such, so that a driver restarted by surprise closes it instead
//! of resuming it from an older snapshot. The group as a whole may be dropped only when
//! [`Group::is_quiescent`]; the driver keeps the object in memory otherwise.

use std::collections::VecDeque;

use super::effect::ConnId;
use super::group::{Conn, Delivery, Group, Session};
use super::store::{DeviceId, GroupStore};
use crate::crypto::PublicKey;
use crate::mediator::GroupConfig;

/// Ephemeral frame ids a snapshot keeps, newest last: a device that acks ephemeral frames
/// (forbidden but common) does so within moments, and a group hibernates only after seconds of
/// silence, so a few cover a late ack without filling the attachment.
pub const SNAPSHOT_EPHEMERAL_IDS: usize = 8;

/// Format version of [`encode_attachment`].
/// Version 2 added `features` and `wake_at`. A version-1 attachment is refused: only a deploy
/// meets one, and a deploy disconnects every socket anyway.
const ATTACHMENT_VERSION: u8 = 2;
const KIND_BUSY: u8 = 0;
const KIND_SNAPSHOT: u8 = 1;

/// An online connection as far as a rebuilt group needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// The device it authenticated as.
    pub device_id: DeviceId,
    /// When its handshake completed (the leader order).
    pub connected_since: u64,
    /// Sequence number of the last queue entry sent (and acked) on it.
    pub cursor: Option<u64>,
    /// The queue's newest entry at the handshake.
    pub dry_boundary: Option<u64>,
    /// Ephemeral frames given an id so far (the next id follows from it).
    pub ephemeral_count: u32,
    /// The newest ephemeral ids sent on it, at most [`SNAPSHOT_EPHEMERAL_IDS`].
    pub ephemeral_ids: Vec<u32>,
    /// It is the group's leader.
    pub leader: bool,
    /// Tandem extensions it negotiated (`ClientHello.tandem_features`).
    pub features: u32,
    /// Its chat server connection is closed by `CspClose`: when it is next woken unless a push
    /// comes first.
    pub wake_at: Option<u64>,
}

/// Why an attachment could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    /// Shorter than its fields say.
    #[error("attachment truncated")]
    Truncated,
    /// Written by another format version.
    #[error("attachment version {0} unknown")]
    Version(u8),
    /// Neither busy nor a snapshot.
    #[error("attachment kind {0} unknown")]
    Kind(u8),
    /// Bytes after the last field.
    #[error("{0} bytes after the attachment")]
    Trailing(usize),
}

/// The bytes a driver keeps beside connection `conn`'s socket: its id and either its snapshot or
/// `None` ("busy": it must not be resumed).
#[must_use]
pub fn encode_attachment(conn: ConnId, snapshot: Option<&ConnSnapshot>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ATTACHMENT_VERSION);
    out.extend_from_slice(&conn.0.to_le_bytes());
    let Some(s) = snapshot else {
        out.push(KIND_BUSY);
        return out;
    };
    out.push(KIND_SNAPSHOT);
    out.extend_from_slice(&s.device_id.0.to_le_bytes());
    out.extend_from_slice(&s.connected_since.to_le_bytes());
    for seq in [s.cursor, s.dry_boundary, s.wake_at] {
        match seq {
            Some(seq) => {
                out.push(1);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&s.ephemeral_count.to_le_bytes());
    let skip = s.ephemeral_ids.len().saturating_sub(SNAPSHOT_EPHEMERAL_IDS);
    let ids = s.ephemeral_ids.get(skip..).unwrap_or_default();
    // At most SNAPSHOT_EPHEMERAL_IDS (8): fits a byte.
    out.push(u8::try_from(ids.len()).unwrap_or(u8::MAX));
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.push(u8::from(s.leader));
    out.extend_from_slice(&s.features.to_le_bytes());
    out
}

/// Reads [`encode_attachment`]'s bytes.
pub fn decode_attachment(bytes: &[u8]) -> Result<(ConnId, Option<ConnSnapshot>), AttachmentError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != ATTACHMENT_VERSION {
        return Err(AttachmentError::Version(version));
    }
    let conn = ConnId(r.u64()?);
    let snapshot = match r.u8()? {
        KIND_BUSY => None,
        KIND_SNAPSHOT => {
            let device_id = DeviceId(r.u64()?);
            let connected_since = r.u64()?;
            let cursor = r.opt_u64()?;
            let dry_boundary = r.opt_u64()?;
            let wake_at = r.opt_u64()?;
            let ephemeral_count = r.u32()?;
            let n = usize::from(r.u8()?).min(SNAPSHOT_EPHEMERAL_IDS);
            let mut ephemeral_ids = Vec::with_capacity(n);
            for _ in 0..n {
                ephemeral_ids.push(r.u32()?);
            }
            let leader = r.u8()? != 0;
            let features = r.u32()?;
            Some(ConnSnapshot {
                device_id,
                connected_since,
                cursor,
                dry_boundary,
                ephemeral_count,
                ephemeral_ids,
                leader,
                features,
                wake_at,
            })
        }
        kind => return Err(AttachmentError::Kind(kind)),
    };
    if !r.0.is_empty() {
        return Err(AttachmentError::Trailing(r.0.len()));
    }
    Ok((conn, snapshot))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], AttachmentError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(AttachmentError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, AttachmentError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, AttachmentError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, AttachmentError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, AttachmentError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.u64().map(Some),
        }
    }
}

impl<S: GroupStore> Group<S> {
    /// Whether nothing of the group lives only in memory: every connection can be rebuilt from
    /// its [`ConnSnapshot`], no handshake is under way, no lock is held, no reflect waits to be
    /// stored. Only then may the driver let the runtime drop the group.
    #[must_use]
    pub fn is_quiescent(&self) -> bool {
        self.lock.is_none()
            && self.pending_reflects.is_empty()
            && self.deferred_closes.is_empty()
            && self.effects.is_empty()
            && self.conns.keys().all(|&conn| self.restorable(conn))
    }

    /// Whether [`Group::snapshot`] would give one, without building it (the Worker asks after
    /// every input).
    #[must_use]
    pub fn restorable(&self, conn: ConnId) -> bool {
        let Some(Conn::Online(session)) = self.conns.get(&conn) else {
            return false;
        };
        let d = &session.delivery;
        let idle = session.csp.is_none()
            && d.dry
            && d.in_flight.is_empty()
            && d.pending_ephemeral.is_empty()
            && d.lock_ack_after.is_none()
            && d.pending_proxy.is_empty()
            && d.acked.is_empty();
        let holds_lock = self.lock.as_ref().is_some_and(|l| l.holder == conn);
        let reflecting = self.pending_reflects.iter().any(|p| p.conn == conn);
        let caught_up = self
            .slots
            .get(&session.device_id)
            .is_some_and(|slot| slot.tail.is_none_or(|tail| d.cursor >= Some(tail)));
        idle && !holds_lock && !reflecting && caught_up
    }

    /// The connection's snapshot, if it can be rebuilt from one right now (see the module
    /// documentation); `None` for a connection still in its handshake, unknown, or busy.
    #[must_use]
    pub fn snapshot(&self, conn: ConnId) -> Option<ConnSnapshot> {
        if !self.restorable(conn) {
            return None;
        }
        let Some(Conn::Online(session)) = self.conns.get(&conn) else {
            return None;
        };
        let d = &session.delivery;
        Some(ConnSnapshot {
            device_id: session.device_id,
            connected_since: session.connected_since,
            cursor: d.cursor,
            dry_boundary: d.dry_boundary,
            ephemeral_count: d.ephemeral_count,
            ephemeral_ids: d
                .ephemeral_ids
                .iter()
                .skip(d.ephemeral_ids.len().saturating_sub(SNAPSHOT_EPHEMERAL_IDS))
                .copied()
                .collect(),
            leader: self.leader == Some(conn),
            features: session.features,
            wake_at: session.wake_at,
        })
    }

    /// Stores every connection's batched acks now instead of before its next frame, so that a
    /// group that has gone idle becomes [`Group::is_quiescent`]. The driver calls it once the
    /// group has been idle for a moment.
    pub fn quiesce(&mut self, now_ms: u64) {
        self.advance(now_ms);
        let devices: Vec<DeviceId> = self.online.keys().copied().collect();
        self.flush_acks_of(&devices);
        self.settle();
    }

    /// Rebuilds a group after hibernation: [`Group::new`] over `store`, then the connections
    /// the driver still has, each from its snapshot. A connection whose device has no slot any
    /// more, or whose device is already taken by an earlier one in `conns`, is not resumed: its
    /// id is in the returned list, and the driver closes it (the device reconnects). The
    /// resumed ones count as connected all along; a leader among them stays the leader, and if
    /// none was, the longest-connected one is promoted.
    pub fn resume(
        config: GroupConfig,
        device_group_id: PublicKey,
        store: S,
        now_ms: u64,
        conns: Vec<(ConnId, ConnSnapshot)>,
    ) -> Result<(Self, Vec<ConnId>), S::Error> {
        let resumed: Vec<DeviceId> = conns.iter().map(|(_, s)| s.device_id).collect();
        let mut group = Self::start(config, device_group_id, store, now_ms, &resumed)?;
        let mut refused = Vec::new();
        let mut leader = None;
        for (conn, snapshot) in conns {
            let device = snapshot.device_id;
            let slot_known = group.slots.contains_key(&device);
            if !slot_known || group.online.contains_key(&device) || group.conns.contains_key(&conn)
            {
                refused.push(conn);
                continue;
            }
            if snapshot.leader && leader.is_none() {
                leader = Some(conn);
            }
            group.conns.insert(
                conn,
                Conn::Online(Box::new(Session {
                    device_id: device,
                    connected_since: snapshot.connected_since,
                    csp: None,
                    unanswered: 0,
                    features: snapshot.features,
                    wake_at: snapshot.wake_at,
                    woken_at: None,
                    delivery: Delivery {
                        cursor: snapshot.cursor,
                        dry_boundary: snapshot.dry_boundary,
                        dry: true,
                        ephemeral_ids: VecDeque::from(snapshot.ephemeral_ids),
                        ephemeral_count: snapshot.ephemeral_count,
                        ..Delivery::default()
                    },
                })),
            );
            group.online.insert(device, conn);
        }
        // A device that was sent entries it has not acked cannot have been snapshotted, so the
        // queue after each cursor is still undelivered: send it (nothing, in the usual case).
        let online: Vec<ConnId> = group.conns.keys().copied().collect();
        for conn in online {
            group.pump(conn);
        }
        match leader {
            Some(conn) => group.leader = Some(conn),
            None => group.promote_next(),
        }
        group.settle();
        Ok((group, refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mediator::testkit::{reflected, Harness};
    use crate::proto::d2m as pb;
    use proptest::prelude::*;

    /// Every connection's snapshot, through the attachment bytes a driver keeps.
    fn hibernate(h: &Harness, conns: &[ConnId]) -> Vec<(ConnId, ConnSnapshot)> {
        conns
            .iter()
            .map(|&conn| {
                let snapshot = h.group.snapshot(conn).expect("restorable");
                let bytes = encode_attachment(conn, Some(&snapshot));
                match decode_attachment(&bytes) {
                    Ok((conn, Some(snapshot))) => (conn, snapshot),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    fn wake(h: &mut Harness, conns: Vec<(ConnId, ConnSnapshot)>, after_ms: u64) -> Vec<ConnId> {
        h.now += after_ms;
        let store = h.group.store().clone();
        let (group, refused) = Group::resume(
            GroupConfig::default(),
            h.keys.dgpk_public,
            store,
            h.now,
            conns,
        )
        .expect("store");
        h.group = group;
        h.drain();
        refused
    }

    #[test]
    fn a_leader_whose_chat_server_connection_is_closed_hibernates_and_a_push_still_wakes_it() {
        use crate::d2m::D2mMessage;
        use crate::mediator::{PushOutcome, TANDEM_FEATURE_CSP_ON_DEMAND};
        let mut h = Harness::new();
        let a = h.login_with(1, |hello| {
            hello.tandem_features = TANDEM_FEATURE_CSP_ON_DEMAND
        });
        h.send(a, D2mMessage::Proxy(vec![1; 48]));
        assert!(!h.group.is_quiescent(), "an open chat server connection");
        h.send(a, D2mMessage::CspClose);
        h.take(a);
        assert!(h.group.is_quiescent());
        let poll = h.group.poll_timeout();
        assert!(poll.is_some());

        let snapshots = hibernate(&h, &[a]);
        assert!(wake(&mut h, snapshots, 1_000).is_empty());
        assert_eq!(h.group.poll_timeout(), poll, "the wake poll survives");
        assert_eq!(h.group.on_push(h.now), PushOutcome::Woken);
        h.drain();
        assert!(matches!(h.take(a).as_slice(), [D2mMessage::Wake]));
    }

    #[test]
    fn a_woken_group_goes_on_where_the_hibernated_one_stopped() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.take(a);
        h.take(b);
        h.reflect(a, b"hello");
        h.take(a);
        let first = reflected(&h.take(b));
        assert!(!h.group.is_quiescent(), "b has not acked");
        h.ack(b, first[0].reflected_id);
        assert!(!h.group.is_quiescent(), "b's ack waits for its next frame");
        h.group.quiesce(h.now);
        h.drain();
        assert!(h.group.is_quiescent());
        assert_eq!(h.queue(2).len, 0, "the ack is stored");

        let snapshots = hibernate(&h, &[a, b]);
        assert!(wake(&mut h, snapshots, 60_000).is_empty());
        assert!(
            h.take(a).is_empty() && h.take(b).is_empty(),
            "nothing sent on waking"
        );
        assert_eq!(h.group.leader(), Some(DeviceId(1)), "the leader stays");
        assert!(
            h.slot(1).and_then(|s| s.last_disconnected_at).is_none(),
            "the resumed devices stay connected"
        );

        h.reflect(a, b"again");
        let second = reflected(&h.take(b));
        assert_eq!(second.len(), 1, "the next entry, once");
        assert!(second[0].reflected_id > first[0].reflected_id);
        h.ack(b, second[0].reflected_id);
        assert_eq!(h.closed(b), None, "its ack is known");
        assert_eq!(h.closed(a), None);
    }

    #[test]
    fn busy_connections_and_a_held_lock_keep_the_group_awake() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.take(a);
        h.take(b);
        assert!(h.group.is_quiescent());
        let handshaking = h.connect();
        assert!(!h.group.is_quiescent(), "a handshake is under way");
        assert_eq!(h.group.snapshot(handshaking), None);
        h.disconnect(handshaking);
        assert!(h.group.is_quiescent());

        h.reflect(a, b"x");
        assert_eq!(h.group.snapshot(b), None, "an entry is in flight to b");
        assert!(h.group.snapshot(a).is_some());
        let sent = reflected(&h.take(b));
        h.ack(b, sent[0].reflected_id);
        h.group.quiesce(h.now);
        h.drain();
        assert!(h.group.is_quiescent());

        h.send(
            a,
            pb::BeginTransaction {
                encrypted_scope: vec![0x5c; 42],
                ttl: 0,
            },
        );
        assert!(!h.group.is_quiescent(), "the lock lives in memory only");
        assert_eq!(h.group.snapshot(a), None);
        assert!(h.group.snapshot(b).is_some());
    }

    #[test]
    fn a_connection_without_its_slot_or_with_a_taken_device_is_refused() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.take(a);
        h.take(b);
        let mut snapshots = hibernate(&h, &[a, b]);
        let mut twin = snapshots[1].1.clone();
        twin.leader = false;
        snapshots.push((ConnId(99), twin));
        let mut stranger = snapshots[0].1.clone();
        stranger.device_id = DeviceId(77);
        stranger.leader = false;
        snapshots.push((ConnId(100), stranger));
        let refused = wake(&mut h, snapshots, 1_000);
        assert_eq!(refused, [ConnId(99), ConnId(100)]);
        assert_eq!(h.group.device_of(b), Some(DeviceId(2)));
    }

    #[test]
    fn without_a_resumed_leader_the_longest_connected_device_is_promoted() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.tick(5);
        let b = h.login(2);
        h.take(a);
        h.take(b);
        let snapshots: Vec<_> = hibernate(&h, &[a, b])
            .into_iter()
            .filter(|(conn, _)| *conn == b)
            .collect();
        let refused = wake(&mut h, snapshots, 1_000);
        assert!(refused.is_empty());
        assert_eq!(h.group.leader(), Some(DeviceId(2)));
        assert!(h
            .take(b)
            .iter()
            .any(|m| matches!(m, crate::d2m::D2mMessage::RolePromotedToLeader(_))));
        assert!(
            h.slot(1).and_then(|s| s.last_disconnected_at).is_some(),
            "the device not resumed counts as gone"
        );
    }

    fn sample() -> ConnSnapshot {
        ConnSnapshot {
            device_id: DeviceId(0x0102_0304_0506_0708),
            connected_since: 1_700_000_000_000,
            cursor: Some(42),
            dry_boundary: None,
            ephemeral_count: 7,
            ephemeral_ids: vec![u32::MAX - 6, u32::MAX - 5],
            leader: true,
            features: 1,
            wake_at: Some(1_700_000_060_000),
        }
    }

    #[test]
    fn attachments_round_trip_and_stay_small() {
        let busy = encode_attachment(ConnId(9), None);
        assert_eq!(decode_attachment(&busy), Ok((ConnId(9), None)));
        let mut full = sample();
        full.ephemeral_ids = (0..300).collect();
        let bytes = encode_attachment(ConnId(3), Some(&full));
        // Cloudflare keeps at most 2 KiB per socket.
        assert!(bytes.len() < 128, "{} bytes", bytes.len());
        let (conn, back) = decode_attachment(&bytes).unwrap();
        assert_eq!(conn, ConnId(3));
        full.ephemeral_ids = (292..300).collect();
        assert_eq!(back, Some(full));
    }

    #[test]
    fn bad_attachments_are_refused_by_name() {
        let good = encode_attachment(ConnId(1), Some(&sample()));
        for len in 0..good.len() {
            assert_eq!(
                decode_attachment(&good[..len]),
                Err(AttachmentError::Truncated)
            );
        }
        let mut other = good.clone();
        other[0] = 1;
        assert_eq!(decode_attachment(&other), Err(AttachmentError::Version(1)));
        let mut kind = encode_attachment(ConnId(1), None);
        kind[9] = 7;
        assert_eq!(decode_attachment(&kind), Err(AttachmentError::Kind(7)));
        let mut long = good;
        long.push(0);
        assert_eq!(decode_attachment(&long), Err(AttachmentError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_attachment(&bytes);
        }
    }
}
