//! Device management (spec §7, DESIGN §3 "Devices"): list, drop, shared device data.

use super::effect::{CloseCause, ConnId};
use super::group::{Conn, Group};
use super::store::{DeviceId, GroupStore};
use crate::proto::d2m::{self as pb, devices_info::augmented_device_info::ConnectionState};

/// Longest `SetSharedDeviceData` blob kept: a sealed `d2d.SharedDeviceData` is under 300 bytes;
/// the bound keeps every `ServerInfo` that carries it small.
pub const MAX_SHARED_DEVICE_DATA_LEN: usize = 16 * 1024;

impl<S: GroupStore> Group<S> {
    pub(super) fn on_get_devices_info(&mut self, conn: ConnId) {
        let augmented_device_info = self
            .slots
            .values()
            .map(|slot| {
                let record = &slot.record;
                let online_since =
                    self.online
                        .get(&record.device_id)
                        .and_then(|c| match self.conns.get(c) {
                            Some(Conn::Online(session)) => Some(session.connected_since),
                            _ => None,
                        });
                let connection_state = match online_since {
                    Some(since) => ConnectionState::ConnectedSince(since),
                    None => ConnectionState::LastDisconnectAt(
                        record
                            .last_disconnected_at
                            .unwrap_or(record.last_connected_at),
                    ),
                };
                (
                    record.device_id.0,
                    pb::devices_info::AugmentedDeviceInfo {
                        encrypted_device_info: record.encrypted_device_info.clone(),
                        connection_state: Some(connection_state),
                        device_slot_expiration_policy: record.expiration_policy.into(),
                    },
                )
            })
            .collect();
        self.send(
            conn,
            pb::DevicesInfo {
                augmented_device_info,
            },
        );
    }

    /// Removes the slot and its queue, closes it with 4113 if online, acks (spec §7). Dropping an
    /// unknown id is acked too: the slot is gone either way.
    pub(super) fn on_drop_device(&mut self, conn: ConnId, device: DeviceId, target: DeviceId) {
        let ack = pb::DropDeviceAck {
            device_id: target.0,
        };
        if target == device {
            // The requester itself: ack first, then close (desktop waits for the close, §7).
            if let Err(error) = self.store.delete_slot(target) {
                return self.store_failed(conn, error);
            }
            self.slots.remove(&target);
            self.online.remove(&target);
            self.send(conn, ack);
            return self.close(conn, CloseCause::DeviceDropped);
        }
        if self.slots.contains_key(&target) {
            if let Err(error) = self.drop_slot(target, CloseCause::DeviceDropped) {
                return self.store_failed(conn, error);
            }
        }
        self.send(conn, ack);
    }

    pub(super) fn on_set_shared_device_data(&mut self, conn: ConnId, data: &[u8]) {
        if data.len() > MAX_SHARED_DEVICE_DATA_LEN {
            return self.close(conn, CloseCause::OversizeField);
        }
        if let Err(error) = self.store.set_shared_device_data(data) {
            self.store_failed(conn, error);
        }
    }
}
