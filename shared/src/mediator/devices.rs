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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::{CloseCode, D2mMessage};
    use crate::mediator::testkit::{names, reflected, Harness, T0};
    use crate::mediator::GroupConfig;
    use crate::proto::d2m::DeviceSlotExpirationPolicy;

    fn devices_info(messages: &[D2mMessage]) -> pb::DevicesInfo {
        match messages.last() {
            Some(D2mMessage::DevicesInfo(info)) => info.clone(),
            other => panic!("expected DevicesInfo, got {other:?}"),
        }
    }

    #[test]
    fn devices_info_lists_every_slot_with_state_info_and_policy() {
        let mut h = Harness::new();
        let a = h.login_with(1, |hello| hello.encrypted_device_info = vec![1; 48]);
        h.tick(10);
        let b = h.login_with(2, |hello| {
            hello.encrypted_device_info = vec![2; 48];
            hello.device_slot_expiration_policy = DeviceSlotExpirationPolicy::Volatile.into();
        });
        h.tick(10);
        h.disconnect(b);
        h.take(a);
        h.send(a, pb::GetDevicesInfo {});
        let info = devices_info(&h.take(a));
        let expected = pb::DevicesInfo {
            augmented_device_info: [
                (
                    1,
                    pb::devices_info::AugmentedDeviceInfo {
                        encrypted_device_info: vec![1; 48],
                        connection_state: Some(ConnectionState::ConnectedSince(T0)),
                        device_slot_expiration_policy: DeviceSlotExpirationPolicy::Persistent
                            .into(),
                    },
                ),
                (
                    2,
                    pb::devices_info::AugmentedDeviceInfo {
                        encrypted_device_info: vec![2; 48],
                        connection_state: Some(ConnectionState::LastDisconnectAt(T0 + 20)),
                        device_slot_expiration_policy: DeviceSlotExpirationPolicy::Volatile.into(),
                    },
                ),
            ]
            .into(),
        };
        assert_eq!(info, expected);
    }

    #[test]
    fn drop_device_removes_slot_and_queue_closes_it_4113_and_acks() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        let c = h.login(3);
        h.disconnect(c);
        h.reflect(a, b"x");
        h.take(a);
        h.send(a, pb::DropDevice { device_id: 2 });
        assert_eq!(h.closed(b), Some(CloseCause::DeviceDropped));
        assert_eq!(CloseCause::DeviceDropped.code(), CloseCode::DeviceDropped);
        assert_eq!(
            h.take(a),
            [D2mMessage::DropDeviceAck(pb::DropDeviceAck {
                device_id: 2
            })]
        );
        assert!(h.slot(2).is_none());
        assert_eq!(h.queue(2).len, 0);
        // An offline one: no close, slot and queue gone.
        h.send(a, pb::DropDevice { device_id: 3 });
        assert!(h.slot(3).is_none());
        assert_eq!(h.group.store().envelope_count(), 0);
        assert_eq!(names(&h.take(a)), ["DropDeviceAck"]);
    }

    #[test]
    fn dropping_oneself_acks_then_closes_4113() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.take(a);
        h.send(a, pb::DropDevice { device_id: 1 });
        assert_eq!(
            h.take(a),
            [D2mMessage::DropDeviceAck(pb::DropDeviceAck {
                device_id: 1
            })]
        );
        assert_eq!(h.closed(a), Some(CloseCause::DeviceDropped));
        assert!(h.slot(1).is_none());
        assert_eq!(h.group.leader(), None);
    }

    #[test]
    fn dropping_an_unknown_device_is_acked() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.take(a);
        h.send(a, pb::DropDevice { device_id: 99 });
        assert_eq!(names(&h.take(a)), ["DropDeviceAck"]);
        assert_eq!(h.closed(a), None);
    }

    #[test]
    fn dropping_the_transaction_holder_ends_its_transaction() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.send(
            b,
            pb::BeginTransaction {
                encrypted_scope: vec![1; 40],
                ttl: 0,
            },
        );
        h.reflect(b, b"staged");
        h.take(a);
        h.send(a, pb::DropDevice { device_id: 2 });
        let seen = h.take(a);
        assert_eq!(names(&seen), ["TransactionEnded", "DropDeviceAck"]);
        assert!(reflected(&seen).is_empty());
        assert_eq!(h.group.transaction_holder(), None);
    }

    #[test]
    fn shared_device_data_is_in_every_later_server_info() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.send(
            a,
            pb::SetSharedDeviceData {
                encrypted_shared_device_data: vec![9; 50],
            },
        );
        assert_eq!(h.closed(a), None);
        for device in [1, 2] {
            let conn = h.login(device);
            match h.take(conn).first() {
                Some(D2mMessage::ServerInfo(info)) => {
                    assert_eq!(info.encrypted_shared_device_data, vec![9; 50]);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn oversize_shared_device_data_closes_4010() {
        let mut h = Harness::new();
        let a = h.login(1);
        h.send(
            a,
            pb::SetSharedDeviceData {
                encrypted_shared_device_data: vec![0; MAX_SHARED_DEVICE_DATA_LEN + 1],
            },
        );
        assert_eq!(h.closed(a), Some(CloseCause::OversizeField));
        assert!(h.group.store().shared_device_data().unwrap().is_empty());
    }

    #[test]
    fn devices_info_fits_a_container_with_every_slot_at_the_longest_info() {
        let config = GroupConfig {
            max_device_slots: 8,
            ..GroupConfig::default()
        };
        let mut h = Harness::with_config(config);
        let mut conns = Vec::new();
        for device in 1..=8 {
            conns.push(h.login_with(device, |hello| {
                hello.encrypted_device_info =
                    vec![0; crate::mediator::MAX_ENCRYPTED_DEVICE_INFO_LEN];
            }));
        }
        h.take(conns[0]);
        h.send(conns[0], pb::GetDevicesInfo {});
        assert_eq!(
            devices_info(&h.take(conns[0])).augmented_device_info.len(),
            8
        );
    }
}
