//! The server side of the d2m handshake (spec §3, DESIGN §3 "Handshake" and "Slots"):
//! challenge check, version, slot check and policies, then `ServerInfo` and the queue.

use super::effect::{CloseCause, ConnId};
use super::group::{slot_state, Conn, Delivery, Group, Session, Slot, PROTOCOL_VERSION};
use super::store::{DeviceId, GroupStore, SlotRecord};
use super::wake::SUPPORTED_TANDEM_FEATURES;
use crate::proto::d2m::{self as pb, client_hello::DeviceSlotsExhaustedPolicy};
use crate::proto::d2m::{DeviceSlotExpirationPolicy, DeviceSlotState};

/// Longest `ClientHello.encrypted_device_info` kept: a sealed `d2d.DeviceInfo` with the longest
/// fields `d2d` allows is about 1.1 KiB, and `DevicesInfo` must fit all slots in one container.
pub const MAX_ENCRYPTED_DEVICE_INFO_LEN: usize = 2048;

/// The `ClientHello` fields the slot check needs, with the enums checked.
struct Hello {
    device_id: DeviceId,
    exhausted: DeviceSlotsExhaustedPolicy,
    expiration: DeviceSlotExpirationPolicy,
    expected: DeviceSlotState,
}

impl<S: GroupStore> Group<S> {
    /// Holds a proxy container that arrived before the handshake (spec §3.1), bounded.
    pub(super) fn hold_proxy(&mut self, conn: ConnId, payload: Vec<u8>) {
        let (max_frames, max_bytes) = (
            self.config.max_pre_auth_proxy_frames,
            self.config.max_pre_auth_proxy_bytes,
        );
        let Some(Conn::Handshake(handshake)) = self.conns.get_mut(&conn) else {
            return;
        };
        let bytes = handshake.held_bytes.saturating_add(payload.len());
        if handshake.held.len() >= max_frames || bytes > max_bytes {
            return self.close(conn, CloseCause::TooMuchBeforeHandshake);
        }
        handshake.held_bytes = bytes;
        handshake.held.push(payload);
    }

    pub(super) fn on_client_hello(&mut self, conn: ConnId, hello: &pb::ClientHello) {
        let Some(Conn::Handshake(handshake)) = self.conns.get(&conn) else {
            return;
        };
        if handshake
            .challenge
            .verify(&self.device_group_id, &hello.response)
            .is_err()
        {
            return self.close(conn, CloseCause::ChallengeFailed);
        }
        if hello.version != PROTOCOL_VERSION {
            return self.close(conn, CloseCause::UnsupportedVersion);
        }
        let Some(checked) = check_hello(hello) else {
            return self.close(conn, CloseCause::InvalidClientHello);
        };
        let device = checked.device_id;
        let existing = self.slots.contains_key(&device);
        if slot_state(existing) != checked.expected {
            return self.close(conn, CloseCause::SlotStateMismatch);
        }
        if existing {
            if let Some(&older) = self.online.get(&device) {
                self.close(older, CloseCause::DeviceIdReused);
            }
        } else if self.slots.len() >= usize::try_from(self.config.max_device_slots).unwrap_or(0)
            && !self.free_a_slot(conn, checked.exhausted)
        {
            return;
        }
        let shared_device_data = match self.store.shared_device_data() {
            Ok(data) => data,
            Err(error) => return self.store_failed(conn, error),
        };
        let record = SlotRecord {
            device_id: device,
            expiration_policy: checked.expiration,
            encrypted_device_info: hello.encrypted_device_info.clone(),
            last_connected_at: self.now,
            last_disconnected_at: self
                .slots
                .get(&device)
                .and_then(|s| s.record.last_disconnected_at),
        };
        if let Err(error) = self.store.put_slot(&record) {
            return self.store_failed(conn, error);
        }
        let slot = self.slots.entry(device).or_insert(Slot {
            record: record.clone(),
            queue_len: 0,
            tail: None,
            expiry_retry_at: None,
        });
        slot.record = record;
        slot.expiry_retry_at = None;
        let (queue_len, tail) = (slot.queue_len, slot.tail);

        let Some(Conn::Handshake(handshake)) = self.conns.remove(&conn) else {
            return;
        };
        self.conns.insert(
            conn,
            Conn::Online(Box::new(Session {
                device_id: device,
                connected_since: self.now,
                csp: None,
                unanswered: 0,
                features: hello.tandem_features & SUPPORTED_TANDEM_FEATURES,
                wake_at: None,
                woken_at: None,
                delivery: Delivery {
                    dry_boundary: tail,
                    ..Delivery::default()
                },
            })),
        );
        self.online.insert(device, conn);
        self.send(
            conn,
            pb::ServerInfo {
                max_device_slots: self.config.max_device_slots,
                device_slot_state: slot_state(existing).into(),
                encrypted_shared_device_data: shared_device_data,
                current_time: self.now,
                reflection_queue_length: u32::try_from(queue_len).unwrap_or(u32::MAX),
                tandem_features: hello.tandem_features & SUPPORTED_TANDEM_FEATURES,
            },
        );
        self.send_push_url(conn);
        self.pump(conn);
        for payload in handshake.held {
            self.forward_proxy(conn, payload);
        }
    }

    /// Makes room for a new slot per the device's policy (DESIGN §3 "Slots"); closes `conn` and
    /// returns `false` when that is not possible.
    fn free_a_slot(&mut self, conn: ConnId, policy: DeviceSlotsExhaustedPolicy) -> bool {
        if policy == DeviceSlotsExhaustedPolicy::Reject {
            self.close(conn, CloseCause::DeviceLimitReached);
            return false;
        }
        // Least recently connected = offline the longest: oldest disconnect, then oldest
        // connect, then lowest id, so the choice is deterministic.
        let victim = self
            .slots
            .values()
            .filter(|s| !self.online.contains_key(&s.record.device_id))
            .min_by_key(|s| {
                (
                    s.record.last_disconnected_at.unwrap_or(0),
                    s.record.last_connected_at,
                    s.record.device_id,
                )
            })
            .map(|s| s.record.device_id);
        let Some(victim) = victim else {
            self.close(conn, CloseCause::DeviceLimitReached);
            return false;
        };
        match self.drop_slot(victim, CloseCause::DeviceDropped) {
            Ok(()) => true,
            Err(error) => {
                self.store_failed(conn, error);
                false
            }
        }
    }
}

/// Checks the enums and the device info length; `None` if any is invalid.
fn check_hello(hello: &pb::ClientHello) -> Option<Hello> {
    if hello.encrypted_device_info.len() > MAX_ENCRYPTED_DEVICE_INFO_LEN {
        return None;
    }
    Some(Hello {
        device_id: DeviceId(hello.device_id),
        exhausted: DeviceSlotsExhaustedPolicy::try_from(hello.device_slots_exhausted_policy)
            .ok()?,
        expiration: DeviceSlotExpirationPolicy::try_from(hello.device_slot_expiration_policy)
            .ok()?,
        expected: DeviceSlotState::try_from(hello.expected_device_slot_state).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d2m::{CloseCode, D2mMessage, ReflectFlags, CHALLENGE_LEN, ESK_LEN};
    use crate::mediator::testkit::{names, reflected, Harness, T0};
    use crate::mediator::{Effect, GroupConfig};

    fn server_info(messages: &[D2mMessage]) -> pb::ServerInfo {
        match messages.first() {
            Some(D2mMessage::ServerInfo(info)) => info.clone(),
            other => panic!("expected ServerInfo first, got {other:?}"),
        }
    }

    #[test]
    fn server_hello_is_version_0_with_fresh_esk_and_challenge() {
        let mut h = Harness::new();
        let (a, b) = (h.connect(), h.connect());
        let (ha, hb) = (h.hellos_of(a), h.hellos_of(b));
        assert_eq!(ha.version, 0);
        assert_eq!(ha.esk.len(), ESK_LEN);
        assert_eq!(ha.challenge.len(), CHALLENGE_LEN);
        assert_ne!(ha.esk, hb.esk);
        assert_ne!(ha.challenge, hb.challenge);
    }

    #[test]
    fn new_device_gets_server_info_then_dry_then_leadership() {
        let mut h = Harness::new();
        h.tick(5);
        let a = h.login(1);
        let messages = h.take(a);
        assert_eq!(
            names(&messages),
            ["ServerInfo", "ReflectionQueueDry", "RolePromotedToLeader"]
        );
        assert_eq!(
            server_info(&messages),
            pb::ServerInfo {
                max_device_slots: 8,
                device_slot_state: DeviceSlotState::New.into(),
                encrypted_shared_device_data: vec![],
                current_time: T0 + 5,
                reflection_queue_length: 0,
                tandem_features: 0,
            }
        );
    }

    #[test]
    fn queued_reflections_follow_server_info_in_order_then_dry() {
        let mut h = Harness::new();
        let a = h.login(1);
        let b = h.login(2);
        h.disconnect(b);
        let sent: Vec<Vec<u8>> = (0..3_u8).map(|i| h.reflect(a, &[i]).1).collect();
        let b = h.login(2);
        let messages = h.take(b);
        assert_eq!(
            names(&messages),
            [
                "ServerInfo",
                "Reflected",
                "Reflected",
                "Reflected",
                "ReflectionQueueDry"
            ]
        );
        let info = server_info(&messages);
        assert_eq!(info.reflection_queue_length, 3);
        assert_eq!(info.device_slot_state, i32::from(DeviceSlotState::Existing));
        let got: Vec<Vec<u8>> = reflected(&messages)
            .into_iter()
            .map(|r| r.envelope)
            .collect();
        assert_eq!(got, sent);
    }

    #[test]
    fn wrong_challenge_response_closes_4010() {
        let mut h = Harness::new();
        let conn = h.connect();
        let mut hello = h.client_hello(conn, 1);
        // A response sealed by a different device group key.
        let other = crate::keys::DeviceGroupKey::from_bytes([7; 32]).derive_keys();
        let server_hello = h.hellos_of(conn);
        let (esk, challenge) = crate::d2m::validate_server_hello(&server_hello).unwrap();
        hello.response = crate::d2m::respond(&other.dgpk, &esk, &challenge, &mut h.rng);
        h.send(conn, hello);
        assert_eq!(h.closed(conn), Some(CloseCause::ChallengeFailed));
        assert_eq!(CloseCause::ChallengeFailed.code(), CloseCode::ProtocolError);
        assert!(h.slot(1).is_none());
    }

    #[test]
    fn response_of_another_connection_is_refused() {
        let mut h = Harness::new();
        let (a, b) = (h.connect(), h.connect());
        let hello_for_a = h.client_hello(a, 1);
        h.send(b, hello_for_a);
        assert_eq!(h.closed(b), Some(CloseCause::ChallengeFailed));
    }

    #[test]
    fn unsupported_version_closes_4110() {
        let mut h = Harness::new();
        let conn = h.login_with(1, |hello| hello.version = 1);
        assert_eq!(h.closed(conn), Some(CloseCause::UnsupportedVersion));
        assert_eq!(
            CloseCause::UnsupportedVersion.code(),
            CloseCode::UnsupportedProtocolVersion
        );
    }

    #[test]
    fn unknown_enum_value_in_client_hello_closes_4010() {
        for edit in [
            (|h: &mut pb::ClientHello| h.device_slots_exhausted_policy = 9) as fn(&mut _),
            |h| h.device_slot_expiration_policy = 2,
            |h| h.expected_device_slot_state = -1,
        ] {
            let mut h = Harness::new();
            let conn = h.login_with(1, edit);
            assert_eq!(h.closed(conn), Some(CloseCause::InvalidClientHello));
        }
    }

    #[test]
    fn oversize_device_info_closes_4010() {
        let mut h = Harness::new();
        let conn = h.login_with(1, |hello| {
            hello.encrypted_device_info = vec![0; MAX_ENCRYPTED_DEVICE_INFO_LEN + 1];
        });
        assert_eq!(h.closed(conn), Some(CloseCause::InvalidClientHello));
        let ok = h.login_with(1, |hello| {
            hello.encrypted_device_info = vec![0; MAX_ENCRYPTED_DEVICE_INFO_LEN];
        });
        assert_eq!(h.closed(ok), None);
    }

    #[test]
    fn proxy_before_handshake_is_held_then_forwarded_in_order() {
        let mut h = Harness::new();
        let conn = h.connect();
        h.send(conn, D2mMessage::Proxy(vec![1; 48]));
        h.send(conn, D2mMessage::Proxy(vec![2; 10]));
        assert!(
            h.csp.is_empty(),
            "nothing reaches the chat server before auth"
        );
        let hello = h.client_hello(conn, 1);
        h.send(conn, hello);
        assert_eq!(
            h.csp,
            [
                Effect::OpenCsp { conn },
                Effect::CspSend {
                    conn,
                    bytes: vec![1; 48]
                },
                Effect::CspSend {
                    conn,
                    bytes: vec![2; 10]
                },
            ]
        );
    }

    #[test]
    fn too_many_proxy_frames_before_handshake_close_4010() {
        let config = GroupConfig {
            max_pre_auth_proxy_frames: 2,
            ..GroupConfig::default()
        };
        let mut h = Harness::with_config(config);
        let conn = h.connect();
        h.send(conn, D2mMessage::Proxy(vec![1]));
        h.send(conn, D2mMessage::Proxy(vec![2]));
        assert_eq!(h.closed(conn), None);
        h.send(conn, D2mMessage::Proxy(vec![3]));
        assert_eq!(h.closed(conn), Some(CloseCause::TooMuchBeforeHandshake));
        assert!(h.csp.is_empty());
    }

    #[test]
    fn too_many_proxy_bytes_before_handshake_close_4010() {
        let config = GroupConfig {
            max_pre_auth_proxy_bytes: 100,
            ..GroupConfig::default()
        };
        let mut h = Harness::with_config(config);
        let conn = h.connect();
        h.send(conn, D2mMessage::Proxy(vec![1; 100]));
        assert_eq!(h.closed(conn), None);
        h.send(conn, D2mMessage::Proxy(vec![1]));
        assert_eq!(h.closed(conn), Some(CloseCause::TooMuchBeforeHandshake));
    }

    #[test]
    fn other_frames_before_handshake_close_4010() {
        let frames: Vec<D2mMessage> = vec![
            pb::GetDevicesInfo {}.into(),
            pb::CommitTransaction {}.into(),
            crate::d2m::Reflect::new(1, ReflectFlags::NONE, vec![0; 48]).into(),
            crate::d2m::ReflectedAck { reflected_id: 1 }.into(),
        ];
        for frame in frames {
            let mut h = Harness::new();
            let conn = h.connect();
            h.send(conn, frame);
            assert_eq!(h.closed(conn), Some(CloseCause::FrameBeforeHandshake));
        }
    }

    #[test]
    fn repeated_client_hello_closes_4010() {
        let mut h = Harness::new();
        let conn = h.connect();
        let hello = h.client_hello(conn, 1);
        h.send(conn, hello.clone());
        h.send(conn, hello);
        assert_eq!(h.closed(conn), Some(CloseCause::RepeatedClientHello));
    }

    #[test]
    fn missing_client_hello_times_out_with_4013() {
        let mut h = Harness::new();
        let conn = h.connect();
        let deadline = T0 + GroupConfig::default().handshake_timeout_ms;
        assert_eq!(h.group.poll_timeout(), Some(deadline));
        h.tick(GroupConfig::default().handshake_timeout_ms - 1);
        h.timeout();
        assert_eq!(h.closed(conn), None);
        h.tick(1);
        h.timeout();
        assert_eq!(h.closed(conn), Some(CloseCause::HandshakeTimeout));
        assert_eq!(
            CloseCause::HandshakeTimeout.code(),
            CloseCode::ClientTimeout
        );
        assert_eq!(h.group.poll_timeout(), None);
    }

    #[test]
    fn expected_state_mismatch_closes_4115_and_spares_the_online_device() {
        let mut h = Harness::new();
        let a = h.login(1);
        let again = h.login_with(1, |hello| {
            hello.expected_device_slot_state = DeviceSlotState::New.into();
        });
        assert_eq!(h.closed(again), Some(CloseCause::SlotStateMismatch));
        assert_eq!(h.closed(a), None);
        let unknown = h.login_with(2, |hello| {
            hello.expected_device_slot_state = DeviceSlotState::Existing.into();
        });
        assert_eq!(h.closed(unknown), Some(CloseCause::SlotStateMismatch));
        assert!(h.slot(2).is_none());
    }

    fn small_group() -> Harness {
        let config = GroupConfig {
            max_device_slots: 2,
            ..GroupConfig::default()
        };
        Harness::with_config(config)
    }

    #[test]
    fn full_group_with_reject_policy_closes_4111() {
        let mut h = small_group();
        let a = h.login(1);
        let b = h.login(2);
        h.disconnect(b);
        let c = h.login(3);
        assert_eq!(h.closed(c), Some(CloseCause::DeviceLimitReached));
        assert_eq!(h.closed(a), None);
        assert!(h.slot(2).is_some());
    }

    #[test]
    fn drop_least_recent_evicts_the_slot_offline_longest() {
        let config = GroupConfig {
            max_device_slots: 3,
            ..GroupConfig::default()
        };
        let mut h = Harness::with_config(config);
        let a = h.login(1);
        let b = h.login(2);
        let c = h.login(3);
        h.tick(10);
        h.disconnect(c); // offline since T0 + 10
        h.tick(10);
        h.disconnect(b); // offline since T0 + 20, although it connected before 3
        h.reflect(a, b"for both");
        assert_eq!(h.queue(3).len, 1);
        let d = h.login_with(4, |hello| {
            hello.device_slots_exhausted_policy =
                DeviceSlotsExhaustedPolicy::DropLeastRecent.into();
        });
        assert_eq!(h.closed(d), None);
        assert!(h.slot(3).is_none(), "offline longest is evicted");
        assert!(h.slot(2).is_some());
        assert_eq!(h.queue(3), crate::mediator::QueueInfo::default());
        assert_eq!(h.queue(2).len, 1);
    }

    #[test]
    fn drop_least_recent_with_every_slot_online_closes_4111() {
        let mut h = small_group();
        h.login(1);
        h.login(2);
        let c = h.login_with(3, |hello| {
            hello.device_slots_exhausted_policy =
                DeviceSlotsExhaustedPolicy::DropLeastRecent.into();
        });
        assert_eq!(h.closed(c), Some(CloseCause::DeviceLimitReached));
        assert!(h.slot(1).is_some() && h.slot(2).is_some());
    }

    #[test]
    fn same_device_again_closes_the_older_connection_with_4112() {
        let mut h = Harness::new();
        let a = h.login(1);
        let other = h.login(2);
        h.reflect(other, b"x");
        h.take(a);
        let again = h.login(1);
        assert_eq!(h.closed(a), Some(CloseCause::DeviceIdReused));
        assert_eq!(h.closed(again), None);
        // The newer connection gets the entry the older one never acked.
        let messages = h.take(again);
        assert_eq!(reflected(&messages).len(), 1);
        assert_eq!(h.group.device_of(again), Some(DeviceId(1)));
    }

    #[test]
    fn volatile_slot_disappears_after_the_grace_period() {
        let mut h = Harness::new();
        let grace = GroupConfig::default().volatile_grace_ms;
        let a = h.login_with(1, |hello| {
            hello.device_slot_expiration_policy = DeviceSlotExpirationPolicy::Volatile.into();
        });
        let b = h.login(2);
        assert_eq!(h.group.poll_timeout(), None, "no expiry while online");
        h.tick(100);
        h.disconnect(a);
        h.disconnect(b);
        assert_eq!(h.group.poll_timeout(), Some(T0 + 100 + grace));
        h.tick(grace - 1);
        h.timeout();
        assert!(h.slot(1).is_some());
        h.tick(1);
        h.timeout();
        assert!(h.slot(1).is_none());
        assert!(h.slot(2).is_some(), "persistent slots stay");
        let again = h.login_with(1, |hello| {
            hello.expected_device_slot_state = DeviceSlotState::Existing.into();
        });
        assert_eq!(h.closed(again), Some(CloseCause::SlotStateMismatch));
    }

    #[test]
    fn volatile_slot_expires_on_any_input_even_without_the_alarm() {
        let mut h = Harness::new();
        let a = h.login_with(1, |hello| {
            hello.device_slot_expiration_policy = DeviceSlotExpirationPolicy::Volatile.into();
        });
        h.disconnect(a);
        h.tick(GroupConfig::default().volatile_grace_ms);
        let b = h.login(1); // expects NEW: the slot is gone before the ClientHello is judged
        assert_eq!(h.closed(b), None);
        assert_eq!(
            names(&h.take(b)).first().map(String::as_str),
            Some("ServerInfo")
        );
    }

    #[test]
    fn device_info_and_policy_come_from_the_latest_client_hello() {
        let mut h = Harness::new();
        let a = h.login_with(1, |hello| hello.encrypted_device_info = vec![1; 50]);
        h.disconnect(a);
        h.tick(7);
        h.login_with(1, |hello| {
            hello.encrypted_device_info = vec![2; 60];
            hello.device_slot_expiration_policy = DeviceSlotExpirationPolicy::Volatile.into();
        });
        let slot = h.slot(1).unwrap();
        assert_eq!(slot.encrypted_device_info, vec![2; 60]);
        assert_eq!(slot.expiration_policy, DeviceSlotExpirationPolicy::Volatile);
        assert_eq!(slot.last_connected_at, T0 + 7);
        assert_eq!(slot.last_disconnected_at, Some(T0));
    }

    #[test]
    fn storage_failure_during_handshake_closes_1011_and_creates_no_slot() {
        let mut h = Harness::flaky(GroupConfig::default());
        h.fail_writes(true);
        let conn = h.login(1);
        assert_eq!(h.closed(conn), Some(CloseCause::StorageFailure));
        assert_eq!(
            CloseCause::StorageFailure.code(),
            CloseCode::ServerInternalError
        );
        assert!(h.slot(1).is_none());
        assert!(h.group.poll_store_error().is_some());
        h.fail_writes(false);
        let conn = h.login(1);
        assert_eq!(h.closed(conn), None);
    }
}
