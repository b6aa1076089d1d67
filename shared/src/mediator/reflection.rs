//! Reflection (spec §5, DESIGN §3 "Reflect"): store once, queue for every other slot, ack, and
//! deliver each slot's queue in order, a window at a time.

use super::effect::{CloseCause, ConnId};
use super::group::{Group, PendingEphemeral};
use super::store::{DeviceId, GroupStore};
use crate::crypto::{NONCE_LEN, TAG_LEN};
use crate::d2m::{Reflect, ReflectAck, ReflectFlags, Reflected, MAX_ENCRYPTED_ENVELOPE_LEN};
use crate::proto::d2m as pb;

/// Shortest envelope that can be a nonce-ahead secretbox (nonce and tag, empty plaintext).
pub const MIN_ENCRYPTED_ENVELOPE_LEN: usize = NONCE_LEN + TAG_LEN;

/// How many recent ephemeral ids a connection remembers, so that a device acking them (desktop
/// does, spec §5) is not closed with 4012.
pub const EPHEMERAL_IDS_REMEMBERED: usize = 256;

/// The wire `reflected-id` of a sequence number: its low 32 bits (spec §2.4: "may wrap").
#[expect(
    clippy::cast_possible_truncation,
    reason = "wrapping to 32 bits is the wire format"
)]
pub(super) const fn wire_id(seq: u64) -> u32 {
    seq as u32
}

/// Whether a connection whose last sent entry is `cursor` has passed entry `mark` (`None`: the
/// start of the queue, passed by everyone).
const fn reached(cursor: Option<u64>, mark: Option<u64>) -> bool {
    match (cursor, mark) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(cursor), Some(mark)) => cursor >= mark,
    }
}

impl<S: GroupStore> Group<S> {
    pub(super) fn on_reflect(&mut self, conn: ConnId, device: DeviceId, reflect: Reflect) {
        let len = reflect.envelope.len();
        if !(MIN_ENCRYPTED_ENVELOPE_LEN..=MAX_ENCRYPTED_ENVELOPE_LEN).contains(&len) {
            return self.close(conn, CloseCause::EnvelopeSize);
        }
        if reflect.flags.is_ephemeral() {
            return self.reflect_ephemeral(conn, device, &reflect.envelope);
        }
        if self.lock.as_ref().is_some_and(|l| l.holder == conn) {
            return self.stage(conn, reflect);
        }
        let now = self.now;
        let Some(targets) = self.make_room(conn, device, 1) else {
            return;
        };
        let seqs = match self.store.enqueue(&reflect.envelope, now, &targets) {
            Ok(seqs) => seqs,
            Err(error) => return self.store_failed(conn, error),
        };
        for (target, seq) in targets.iter().zip(seqs) {
            if let Some(slot) = self.slots.get_mut(target) {
                slot.queue_len = slot.queue_len.saturating_add(1);
                slot.tail = Some(seq);
            }
        }
        self.send(
            conn,
            ReflectAck {
                reflect_id: reflect.reflect_id,
                timestamp: now,
            },
        );
        self.pump_devices(&targets);
    }

    /// The slots a reflect from `device` goes to, after dropping those whose queue would go over
    /// its limit with `adding` more entries (4114, DESIGN §3). `None` if a drop failed; `conn`
    /// is then closed with 1011 and nothing may be stored.
    pub(super) fn make_room(
        &mut self,
        conn: ConnId,
        device: DeviceId,
        adding: u64,
    ) -> Option<Vec<DeviceId>> {
        let limit = self.config.max_queue_len;
        let (full, targets): (Vec<&super::group::Slot>, Vec<&super::group::Slot>) = self
            .slots
            .values()
            .filter(|s| s.record.device_id != device)
            .partition(|s| s.queue_len.saturating_add(adding) > limit);
        let full: Vec<DeviceId> = full.iter().map(|s| s.record.device_id).collect();
        let targets: Vec<DeviceId> = targets.iter().map(|s| s.record.device_id).collect();
        for victim in full {
            if let Err(error) = self.drop_slot(victim, CloseCause::QueueLimitReached) {
                self.store_failed(conn, error);
                return None;
            }
        }
        Some(targets)
    }

    /// Sends what the online ones among `devices` can take now.
    pub(super) fn pump_devices(&mut self, devices: &[DeviceId]) {
        for device in devices {
            if let Some(&conn) = self.online.get(device) {
                self.pump(conn);
            }
        }
    }

    /// Ephemeral: to online siblings only, in queue position, never stored, no ack (spec §5).
    fn reflect_ephemeral(&mut self, conn: ConnId, device: DeviceId, envelope: &[u8]) {
        let now = self.now;
        let max_pending = self.config.max_pending_ephemeral;
        for sibling in self.online_conns_except(conn) {
            let Some(target) = self.device_of(sibling) else {
                continue;
            };
            if target == device {
                continue;
            }
            let seq = match self.store.allocate_seq(target) {
                Ok(seq) => seq,
                Err(error) => {
                    self.store_failed(sibling, error);
                    continue;
                }
            };
            let after = self.slots.get(&target).and_then(|s| s.tail);
            let Some(session) = self.session_mut(sibling) else {
                continue;
            };
            let pending = &mut session.delivery.pending_ephemeral;
            if pending.len() >= max_pending {
                pending.pop_front();
            }
            pending.push_back(PendingEphemeral {
                after,
                reflected: Reflected::new(
                    wire_id(seq),
                    ReflectFlags::EPHEMERAL,
                    now,
                    envelope.to_vec(),
                ),
            });
            self.flush_ephemeral(sibling);
        }
    }

    /// Sends the ephemeral frames whose place in the queue this connection has reached.
    fn flush_ephemeral(&mut self, conn: ConnId) {
        let mut ready = Vec::new();
        if let Some(session) = self.session_mut(conn) {
            let delivery = &mut session.delivery;
            while delivery
                .pending_ephemeral
                .front()
                .is_some_and(|p| reached(delivery.cursor, p.after))
            {
                if let Some(p) = delivery.pending_ephemeral.pop_front() {
                    if delivery.ephemeral_ids.len() >= EPHEMERAL_IDS_REMEMBERED {
                        delivery.ephemeral_ids.pop_front();
                    }
                    delivery.ephemeral_ids.push_back(p.reflected.reflected_id);
                    ready.push(p.reflected);
                }
            }
        }
        for reflected in ready {
            self.send(conn, reflected);
        }
    }

    /// Sends `ReflectionQueueDry` once and offers the leader role (spec §3.1 step 7, §4).
    fn mark_dry(&mut self, conn: ConnId) {
        if let Some(session) = self.session_mut(conn) {
            session.delivery.dry = true;
            self.send(conn, pb::ReflectionQueueDry {});
            self.on_dry(conn);
        }
    }

    /// Sends queue entries up to the in-flight window, with ephemeral frames and
    /// `ReflectionQueueDry` in their places.
    pub(super) fn pump(&mut self, conn: ConnId) {
        let window = self.config.max_in_flight;
        loop {
            self.flush_ephemeral(conn);
            let Some(session) = self.session_mut(conn) else {
                return;
            };
            let device = session.device_id;
            let delivery = &session.delivery;
            let (cursor, dry, boundary) = (delivery.cursor, delivery.dry, delivery.dry_boundary);
            let room = window.saturating_sub(delivery.in_flight.len());
            if !dry && reached(cursor, boundary) {
                self.mark_dry(conn);
                continue;
            }
            let tail = self.slots.get(&device).and_then(|s| s.tail);
            if reached(cursor, tail) || room == 0 {
                return;
            }
            let entries = match self.store.read_queue(device, cursor, room) {
                Ok(entries) => entries,
                Err(error) => return self.store_failed(conn, error),
            };
            if entries.is_empty() {
                // The cached tail is ahead of the store (only a store breaking its contract can
                // do that): settle as caught up rather than spin.
                if let Some(slot) = self.slots.get_mut(&device) {
                    slot.tail = cursor;
                }
                if !dry {
                    self.mark_dry(conn);
                }
                return;
            }
            for entry in entries {
                let Some(session) = self.session_mut(conn) else {
                    return;
                };
                if !session.delivery.dry && !reached(boundary, Some(entry.seq)) {
                    // Past the boundary without having met it: the boundary entry is gone.
                    self.mark_dry(conn);
                }
                let Some(session) = self.session_mut(conn) else {
                    return;
                };
                let id = wire_id(entry.seq);
                session.delivery.in_flight.push_back((id, entry.seq));
                session.delivery.cursor = Some(entry.seq);
                let dry_now = !session.delivery.dry && reached(Some(entry.seq), boundary);
                self.send(
                    conn,
                    Reflected::new(id, ReflectFlags::NONE, entry.stored_at, entry.envelope),
                );
                self.flush_ephemeral(conn);
                if dry_now {
                    self.mark_dry(conn);
                }
            }
        }
    }

    /// Removes an acked entry from the slot's queue (spec §5); an id not in flight on this
    /// connection is 4012, unless it was an ephemeral frame's.
    pub(super) fn on_reflected_ack(&mut self, conn: ConnId, reflected_id: u32) {
        let Some(session) = self.session_mut(conn) else {
            return;
        };
        let device = session.device_id;
        let delivery = &mut session.delivery;
        let Some(index) = delivery
            .in_flight
            .iter()
            .position(|&(id, _)| id == reflected_id)
        else {
            if let Some(index) = delivery
                .ephemeral_ids
                .iter()
                .position(|&id| id == reflected_id)
            {
                delivery.ephemeral_ids.remove(index);
                return;
            }
            return self.close(conn, CloseCause::UnexpectedAck);
        };
        let Some(&(_, seq)) = delivery.in_flight.get(index) else {
            return;
        };
        match self.store.remove_from_queue(device, seq) {
            Ok(removed) => {
                if let Some(session) = self.session_mut(conn) {
                    session.delivery.in_flight.remove(index);
                }
                if let Some(slot) = self.slots.get_mut(&device) {
                    if removed {
                        slot.queue_len = slot.queue_len.saturating_sub(1);
                    }
                }
                self.pump(conn);
            }
            Err(error) => self.store_failed(conn, error),
        }
    }
}
