//! The device-to-device layer (spec §3.3, §3.4, §6, §8): what the devices of one group tell each
//! other through the mediator, sealed under the device group subkeys so that the mediator only
//! ever stores and forwards ciphertext.
//!
//! Each blob uses the "nonce-ahead" layout `nonce(24) ‖ tag(16) ‖ secretbox(protobuf)`:
//! - [`envelope`]: `d2d.Envelope` under `dgrk`, the payload of every Reflect/Reflected;
//! - [`device_info`]: `d2d.DeviceInfo` under `dgdik`, in ClientHello and DevicesInfo;
//! - [`shared_device_data`]: `d2d.SharedDeviceData` under `dgsddk`, in ServerInfo;
//! - [`transaction_scope`]: `d2d.TransactionScope` under `dgtsk`, in the transaction messages.
//!
//! The protobuf shapes themselves are [`crate::proto::d2d`], [`crate::proto::sync`] and
//! [`crate::proto::common`].

pub mod device_info;
pub mod envelope;
mod error;
pub mod shared_device_data;
#[cfg(test)]
pub(crate) mod strategies;
pub mod transaction_scope;
#[cfg(test)]
mod wire_tests;

pub use device_info::{
    open_device_info, seal_device_info, DeviceInfo, Platform, MAX_APP_VERSION_LEN, MAX_LABEL_LEN,
    MAX_PLATFORM_DETAILS_LEN,
};
pub use envelope::{
    open_envelope, seal_envelope, MAX_ENVELOPE_PADDING, MAX_PLAIN_ENVELOPE_LEN,
    MAX_SEALED_ENVELOPE_LEN,
};
pub use error::D2dError;

/// The d2d `ProtocolVersion` every envelope this device reflects carries (protocol version 23's
/// `Envelope.protocol_version`): V0.1, because siblings apply group control from reflected CSP
/// messages (docs/protocol.md "Protocol version 23").
pub const PROTOCOL_VERSION: u32 = crate::proto::d2d::ProtocolVersion::V01 as u32;
pub use shared_device_data::{open_shared_device_data, seal_shared_device_data, SharedDeviceData};
pub use transaction_scope::{open_transaction_scope, seal_transaction_scope, Scope};
