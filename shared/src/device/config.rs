//! What a device brings to a connection (spec §3.3).

use crate::csp::CspClientConfig;
use crate::d2d::DeviceInfo;
use crate::keys::DeviceGroupKeys;
use crate::proto::d2m::client_hello::DeviceSlotsExhaustedPolicy;
use crate::proto::d2m::{DeviceSlotExpirationPolicy, DeviceSlotState};

/// Time from the start of a session to `ServerInfo`; after it the device closes with 4013
/// (desktop also closes locally with 4013 on a timeout, spec §3.5).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 30_000;

/// One device's settings for a mediator connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// The group's subkeys: `dgpk` answers the challenge, the others seal and open blobs.
    pub keys: DeviceGroupKeys,
    /// Own d2m device id (`ClientHello.device_id`, and `Envelope.device_id` on reflect).
    pub device_id: u64,
    /// Sealed under `dgdik` into `ClientHello.encrypted_device_info`.
    pub device_info: DeviceInfo,
    /// NEW until this install has once received a `ServerInfo`, then EXISTING (spec §3.3).
    pub expected_slot_state: DeviceSlotState,
    /// What the mediator does when no slot is free (desktop: REJECT).
    pub slots_exhausted_policy: DeviceSlotsExhaustedPolicy,
    /// Whether the slot outlives the connection (desktop: PERSISTENT).
    pub expiration_policy: DeviceSlotExpirationPolicy,
    /// The chat server login; `None` makes the session d2m-only (no proxy frames at all).
    pub csp: Option<CspClientConfig>,
    /// See [`DEFAULT_HANDSHAKE_TIMEOUT_MS`].
    pub handshake_timeout_ms: u64,
    /// Tandem extensions to ask for (`ClientHello.tandem_features`, docs/protocol.md "CSP on
    /// demand"); 0 behaves exactly as Threema's devices.
    pub tandem_features: u32,
}

impl DeviceConfig {
    /// Desktop's choices (spec §3.3): expecting a NEW slot, REJECT, PERSISTENT, no CSP.
    #[must_use]
    pub const fn new(keys: DeviceGroupKeys, device_id: u64, device_info: DeviceInfo) -> Self {
        Self {
            keys,
            device_id,
            device_info,
            expected_slot_state: DeviceSlotState::New,
            slots_exhausted_policy: DeviceSlotsExhaustedPolicy::Reject,
            expiration_policy: DeviceSlotExpirationPolicy::Persistent,
            csp: None,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            tandem_features: 0,
        }
    }
}
