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
        self.send(conn, pb::BeginTransactionAck {});
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
            }
            targets = room;
        }
        if let Some(lock) = self.lock.take() {
            self.send(conn, pb::CommitTransactionAck {});
            self.transaction_ended(&lock);
        }
        self.pump_devices(&targets);
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
