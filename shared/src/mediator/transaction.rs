//! The group's transaction lock (spec §6, DESIGN §3 "Transactions"): one per group; writes
//! inside it are staged and reach the siblings' queues at commit, all at once, or never.

use super::effect::{CloseCause, ConnId};
use super::group::{Group, Lock};
use super::store::{DeviceId, GroupStore};
use crate::d2m::{Reflect, ReflectAck};
use crate::proto::d2m as pb;

/// Longest `BeginTransaction.encrypted_scope` accepted: a sealed `d2d.TransactionScope` is 40–42
/// bytes; the bound keeps `TransactionRejected`/`TransactionEnded`, which echo it, small.
pub const MAX_ENCRYPTED_SCOPE_LEN: usize = 1024;

impl<S: GroupStore> Group<S> {
    pub(super) fn on_begin_transaction(
        &mut self,
        conn: ConnId,
        device: DeviceId,
        begin: pb::BeginTransaction,
    ) {
        if begin.encrypted_scope.len() > MAX_ENCRYPTED_SCOPE_LEN {
            return self.close(conn, CloseCause::OversizeField);
        }
        if let Some(lock) = &self.lock {
            if lock.holder == conn {
                return self.close(conn, CloseCause::NestedTransaction);
            }
            let rejected = pb::TransactionRejected {
                device_id: lock.device_id.0,
                encrypted_scope: lock.scope.clone(),
            };
            return self.send(conn, rejected);
        }
        if self.staged_dirty {
            if let Err(error) = self.store.discard_staged() {
                return self.store_failed(conn, error);
            }
            self.staged_dirty = false;
        }
        let cap = self.config.max_transaction_ttl_s;
        let ttl_s = if begin.ttl == 0 {
            cap
        } else {
            begin.ttl.min(cap)
        };
        self.lock = Some(Lock {
            holder: conn,
            device_id: device,
            scope: begin.encrypted_scope,
            deadline: self
                .now
                .saturating_add(u64::from(ttl_s).saturating_mul(1000)),
            staged: 0,
        });
        // The ack goes after every queue entry the slot held at the grant, so the holder has
        // applied every commit made before its lock when it reads its state to build the
        // transaction (a window full of unacked entries would otherwise let the ack overtake
        // them, and the holder would write from a state older than the group's).
        let after = self.slots.get(&device).and_then(|s| s.tail);
        if let Some(session) = self.session_mut(conn) {
            session.delivery.lock_ack_after = Some(after);
        }
        self.flush_placed(conn);
    }

    /// A reflect by the lock holder: stored and acked now, visible at commit.
    pub(super) fn stage(&mut self, conn: ConnId, reflect: Reflect) {
        let limit = self.config.max_queue_len;
        let Some(lock) = &self.lock else {
            return;
        };
        if lock.staged >= limit {
            // No queue could take the commit: refuse now rather than drop every sibling then.
            return self.close(conn, CloseCause::TransactionTooLarge);
        }
        let now = self.now;
        if let Err(error) = self.store.stage(&reflect.envelope, now) {
            return self.store_failed(conn, error);
        }
        if let Some(lock) = &mut self.lock {
            lock.staged = lock.staged.saturating_add(1);
        }
        self.send(
            conn,
            ReflectAck {
                reflect_id: reflect.reflect_id,
                timestamp: now,
            },
        );
    }

    pub(super) fn on_commit_transaction(&mut self, conn: ConnId) {
        let Some(lock) = self.lock.as_ref().filter(|l| l.holder == conn) else {
            return self.close(conn, CloseCause::CommitWithoutLock);
        };
        let (device, staged) = (lock.device_id, lock.staged);
        let mut targets = Vec::new();
        if staged > 0 {
            let Some(room) = self.make_room(conn, device, staged) else {
                return;
            };
            let tails = match self.store.commit_staged(&room) {
                Ok(tails) => tails,
                // Closing the holder discards the staged writes: nothing reaches anyone.
                Err(error) => return self.store_failed(conn, error),
            };
            for (target, tail) in room.iter().zip(tails) {
                if let Some(slot) = self.slots.get_mut(target) {
                    slot.queue_len = slot.queue_len.saturating_add(staged);
                    slot.tail = Some(tail);
                }
                // Committed bodies are read from the store (they never passed through memory).
                self.forget_ahead(*target);
            }
            targets = room;
        }
        if let Some(lock) = self.lock.take() {
            self.send(conn, pb::CommitTransactionAck {});
            // The committed writes go out first, so a sibling that retries on TransactionEnded
            // has already seen what it may be retrying against.
            self.pump_devices(&targets);
            self.transaction_ended(&lock);
        }
    }

    /// Ends the lock without committing (holder gone or TTL): the staged writes are discarded.
    pub(super) fn abandon_transaction(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        if lock.staged > 0 || self.staged_dirty {
            match self.store.discard_staged() {
                Ok(()) => self.staged_dirty = false,
                Err(error) => {
                    // Retried before the next transaction begins, so these can never commit.
                    self.staged_dirty = true;
                    self.store_errors.push_back(error);
                }
            }
        }
        self.transaction_ended(&lock);
    }

    /// `TransactionEnded` to every other connected device (spec §6).
    fn transaction_ended(&mut self, lock: &Lock) {
        for conn in self.online_conns_except(lock.holder) {
            self.send(
                conn,
                pb::TransactionEnded {
                    device_id: lock.device_id.0,
                    encrypted_scope: lock.scope.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::{CloseCode, D2mMessage, ReflectFlags};
    use crate::mediator::testkit::{names, reflected, Harness, T0};
    use crate::mediator::GroupConfig;

    fn begin(ttl: u32) -> pb::BeginTransaction {
        pb::BeginTransaction {
            encrypted_scope: vec![0x5c; 42],
            ttl,
        }
    }

    /// A group of three online devices whose startup chatter has been read.
    fn three() -> (Harness, [ConnId; 3]) {
        let mut h = Harness::new();
        let conns = [h.login(1), h.login(2), h.login(3)];
        for c in conns {
            h.take(c);
        }
        (h, conns)
    }

    #[test]
    fn begin_when_free_is_acked_and_a_second_begin_is_rejected_with_holder_and_scope() {
        let (mut h, [a, b, _]) = three();
        h.send(a, begin(0));
        assert_eq!(names(&h.take(a)), ["BeginTransactionAck"]);
        assert_eq!(h.group.transaction_holder(), Some(DeviceId(1)));
        h.send(
            b,
            pb::BeginTransaction {
                encrypted_scope: vec![1; 40],
                ttl: 0,
            },
        );
        assert_eq!(
            h.take(b),
            [D2mMessage::TransactionRejected(pb::TransactionRejected {
                device_id: 1,
                encrypted_scope: vec![0x5c; 42],
            })]
        );
        assert_eq!(h.group.transaction_holder(), Some(DeviceId(1)));
    }

    #[test]
    fn writes_inside_a_transaction_are_acked_at_once_but_seen_only_at_commit_in_order() {
        let (mut h, [a, b, c]) = three();
        h.disconnect(c);
        h.send(a, begin(0));
        h.take(a);
        h.tick(5);
        let (id1, e1) = h.reflect(a, b"t1");
        let (id2, e2) = h.reflect(a, b"t2");
        assert_eq!(
            h.take(a)
                .iter()
                .map(|m| match m {
                    D2mMessage::ReflectAck(ack) => (ack.reflect_id, ack.timestamp),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            [(id1, T0 + 5), (id2, T0 + 5)]
        );
        assert!(h.take(b).is_empty(), "invisible before commit");
        assert_eq!(h.queue(3).len, 0, "not even queued for offline slots");
        h.send(a, pb::CommitTransaction {});
        assert_eq!(names(&h.take(a)), ["CommitTransactionAck"]);
        let seen = h.take(b);
        assert_eq!(names(&seen), ["Reflected", "Reflected", "TransactionEnded"]);
        let got: Vec<Vec<u8>> = reflected(&seen).into_iter().map(|r| r.envelope).collect();
        assert_eq!(got, [e1.clone(), e2.clone()]);
        assert_eq!(
            h.queued(3)
                .into_iter()
                .map(|e| e.envelope)
                .collect::<Vec<_>>(),
            [e1, e2]
        );
        assert_eq!(h.group.transaction_holder(), None);
    }

    #[test]
    fn the_lock_is_acked_only_after_every_entry_queued_before_it() {
        // Window 2: b has a committed transaction of 3 entries in its queue, 2 sent, unacked.
        let mut h = Harness::with_config(GroupConfig {
            max_in_flight: 2,
            ..GroupConfig::default()
        });
        let a = h.login(1);
        let b = h.login(2);
        h.take(a);
        h.take(b);
        h.send(a, begin(0));
        h.take(a);
        let envelopes: Vec<Vec<u8>> = [b"c1", b"c2", b"c3"]
            .iter()
            .map(|body| h.reflect(a, *body).1)
            .collect();
        h.send(a, pb::CommitTransaction {});
        h.take(a);
        let first = h.take(b);
        assert_eq!(
            names(&first),
            ["Reflected", "Reflected", "TransactionEnded"]
        );
        // b takes the lock at once, but learns it only after the third entry: it then holds
        // the lock with the group's newest state applied.
        h.send(b, begin(0));
        assert_eq!(h.group.transaction_holder(), Some(DeviceId(2)));
        assert!(
            h.take(b).is_empty(),
            "the ack waits for the entries before it"
        );
        let ids: Vec<u32> = reflected(&first).iter().map(|r| r.reflected_id).collect();
        h.ack(b, ids[0]);
        h.ack(b, ids[1]);
        let rest = h.take(b);
        assert_eq!(names(&rest), ["Reflected", "BeginTransactionAck"]);
        assert_eq!(reflected(&rest)[0].envelope, envelopes[2]);
        // Entries reflected after the grant do not hold it back (a sibling's live message).
        h.send(b, pb::CommitTransaction {});
        assert_eq!(names(&h.take(b)), ["CommitTransactionAck"]);
    }

    #[test]
    fn sibling_writes_during_a_transaction_flow_normally() {
        let (mut h, [a, b, c]) = three();
        h.send(a, begin(0));
        h.reflect(a, b"staged");
        let (_, plain) = h.reflect(b, b"plain");
        let got = reflected(&h.take(c));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].envelope, plain);
    }

    #[test]
    fn ephemeral_inside_a_transaction_is_not_held_back() {
        let (mut h, [a, b, _]) = three();
        h.send(a, begin(0));
        h.reflect_flags(a, b"typing", ReflectFlags::EPHEMERAL);
        assert_eq!(reflected(&h.take(b)).len(), 1);
    }

    #[test]
    fn holder_disconnect_discards_staged_writes_and_ends_the_transaction() {
        let (mut h, [a, b, c]) = three();
        h.disconnect(c);
        h.send(a, begin(0));
        h.reflect(a, b"t1");
        h.reflect(a, b"t2");
        assert_eq!(h.group.store().staged_count(), 2);
        h.disconnect(a);
        let seen = h.take(b);
        assert_eq!(
            seen.iter()
                .find(|m| matches!(m, D2mMessage::TransactionEnded(_))),
            Some(&D2mMessage::TransactionEnded(pb::TransactionEnded {
                device_id: 1,
                encrypted_scope: vec![0x5c; 42],
            }))
        );
        assert!(reflected(&seen).is_empty());
        assert_eq!(h.queue(3).len, 0);
        assert_eq!(h.group.store().staged_count(), 0);
        assert_eq!(h.group.transaction_holder(), None);
        h.send(b, begin(0));
        assert!(names(&h.take(b)).contains(&"BeginTransactionAck".to_owned()));
    }

    #[test]
    fn ttl_expiry_closes_the_holder_4011_and_discards() {
        let (mut h, [a, b, _]) = three();
        h.send(a, begin(5));
        h.reflect(a, b"t1");
        assert_eq!(h.group.poll_timeout(), Some(T0 + 5_000));
        h.tick(4_999);
        h.timeout();
        assert_eq!(h.closed(a), None);
        h.tick(1);
        h.timeout();
        assert_eq!(h.closed(a), Some(CloseCause::TransactionTtlExceeded));
        assert_eq!(
            CloseCause::TransactionTtlExceeded.code(),
            CloseCode::TransactionTtlExceeded
        );
        let seen = h.take(b);
        assert!(seen
            .iter()
            .any(|m| matches!(m, D2mMessage::TransactionEnded(_))));
        assert!(reflected(&seen).is_empty());
    }

    #[test]
    fn a_commit_after_the_ttl_comes_too_late() {
        let (mut h, [a, b, _]) = three();
        h.send(a, begin(1));
        h.reflect(a, b"t1");
        h.tick(1_000);
        h.send(a, pb::CommitTransaction {});
        assert_eq!(h.closed(a), Some(CloseCause::TransactionTtlExceeded));
        assert!(reflected(&h.take(b)).is_empty());
    }

    #[test]
    fn ttl_zero_or_above_the_cap_means_the_cap() {
        let cap = GroupConfig::default().max_transaction_ttl_s;
        for ttl in [0, cap + 1, u32::MAX] {
            let (mut h, [a, _, _]) = three();
            h.send(a, begin(ttl));
            assert_eq!(
                h.group.poll_timeout(),
                Some(T0 + u64::from(cap) * 1000),
                "{ttl}"
            );
        }
    }

    #[test]
    fn commit_without_the_lock_closes_4010() {
        let (mut h, [a, b, _]) = three();
        h.send(b, pb::CommitTransaction {});
        assert_eq!(h.closed(b), Some(CloseCause::CommitWithoutLock));
        h.send(a, begin(0));
        let c = h.login(4);
        h.send(c, pb::CommitTransaction {});
        assert_eq!(h.closed(c), Some(CloseCause::CommitWithoutLock));
        assert_eq!(
            h.group.transaction_holder(),
            Some(DeviceId(1)),
            "holder unaffected"
        );
    }

    #[test]
    fn begin_while_holding_closes_4010() {
        let (mut h, [a, _, _]) = three();
        h.send(a, begin(0));
        h.send(a, begin(0));
        assert_eq!(h.closed(a), Some(CloseCause::NestedTransaction));
        assert_eq!(h.group.transaction_holder(), None);
    }

    #[test]
    fn oversize_scope_closes_4010() {
        let (mut h, [a, _, _]) = three();
        h.send(
            a,
            pb::BeginTransaction {
                encrypted_scope: vec![0; MAX_ENCRYPTED_SCOPE_LEN + 1],
                ttl: 0,
            },
        );
        assert_eq!(h.closed(a), Some(CloseCause::OversizeField));
    }

    #[test]
    fn more_staged_writes_than_a_queue_holds_close_4010() {
        let config = GroupConfig {
            max_queue_len: 2,
            ..GroupConfig::default()
        };
        let mut h = Harness::with_config(config);
        let a = h.login(1);
        let b = h.login(2);
        h.send(a, begin(0));
        h.reflect(a, b"1");
        h.reflect(a, b"2");
        assert_eq!(h.closed(a), None);
        h.reflect(a, b"3");
        assert_eq!(h.closed(a), Some(CloseCause::TransactionTooLarge));
        assert!(h.slot(2).is_some(), "no sibling pays for it");
        assert_eq!(h.queue(2).len, 0);
        assert_eq!(h.closed(b), None);
    }

    /// A group with queue limit 3 where device 2 has received two entries and acked
    /// `acked` of them (held in memory), and device 1 holds the lock with `staged` writes.
    fn commit_against_held_acks(acked: usize, staged: u8) -> (Harness, ConnId, ConnId) {
        let (mut h, a, b) = Harness::two_queued_with_held_acks(3, acked);
        h.send(a, begin(0));
        for i in 0..staged {
            h.reflect(a, &[b't', i]);
        }
        h.take(a);
        h.send(a, pb::CommitTransaction {});
        (h, a, b)
    }

    #[test]
    fn a_commit_counts_the_acks_a_sibling_has_sent_before_it_drops_it() {
        let (mut h, a, b) = commit_against_held_acks(2, 2);
        assert_eq!(names(&h.take(a)), ["CommitTransactionAck"]);
        assert_eq!(h.closed(b), None, "2 acked + 2 committed fits 3");
        assert_eq!(
            names(&h.take(b)),
            ["Reflected", "Reflected", "TransactionEnded"]
        );
        assert_eq!(h.queue(2).len, 2, "only the committed writes are left");
    }

    #[test]
    fn a_commit_still_drops_a_sibling_over_the_limit_after_its_acks_are_stored() {
        let (mut h, a, b) = commit_against_held_acks(1, 3);
        assert_eq!(names(&h.take(a)), ["CommitTransactionAck"]);
        assert_eq!(h.closed(b), Some(CloseCause::QueueLimitReached));
        assert!(h.slot(2).is_none());
    }

    #[test]
    fn failed_commit_discards_everything() {
        let mut h = Harness::flaky(GroupConfig::default());
        let a = h.login(1);
        let b = h.login(2);
        h.send(a, begin(0));
        h.reflect(a, b"t1");
        h.take(b);
        h.group.store.fail_writes = true;
        h.send(a, pb::CommitTransaction {});
        h.group.store.fail_writes = false;
        assert_eq!(h.closed(a), Some(CloseCause::StorageFailure));
        assert!(reflected(&h.take(b)).is_empty());
        assert_eq!(h.queue(2).len, 0);
        // The discard failed too (writes were failing): the next begin cleans up first.
        assert_eq!(h.group.store().inner.staged_count(), 1);
        h.send(b, begin(0));
        assert_eq!(h.group.store().inner.staged_count(), 0);
        h.send(b, pb::CommitTransaction {});
        assert_eq!(
            h.queue(1).len,
            0,
            "the dead transaction's write never arrives"
        );
    }
}
