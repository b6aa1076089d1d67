//! Protobuf ⇄ proto3 JSON, through the library's own types.
//!
//! The JSON side uses `prost-reflect` over the descriptor set that `shared`'s build script
//! compiles from the same `.proto` files as the Rust types, so the mapping cannot drift from the
//! schema. Bytes always pass through the library's decoder (and, for `ClientUrlInfo`, its
//! validation) before they are shown, so the shim answers what the library accepts.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};
use tandem_shared::keys::ClientUrlInfo;
use tandem_shared::proto;

use super::ShimError;

/// The message names `proto-decode` / `proto-encode` accept.
pub const PROTO_NAMES: [&str; 17] = [
    "d2m.ClientUrlInfo",
    "d2d.Envelope",
    "d2d.DeviceInfo",
    "d2d.SharedDeviceData",
    "d2d.TransactionScope",
    // Protocol version 23 (docs/protocol.md): the messages it added or changed that no envelope
    // content reaches on its own.
    "common.BlobData",
    "common.Timespan",
    "common.Resolution",
    "csp_e2e.EditMessage",
    "csp_e2e.DeleteMessage",
    "csp_e2e.GroupCallStart",
    "csp_e2e.Reaction",
    "csp_e2e.WorkSyncDelta",
    "sync.Contact",
    "sync.Group",
    "sync.UserProfile",
    "sync.ThreemaWorkCredentials",
];

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()));

pub(crate) fn descriptor(full_name: &str) -> Result<MessageDescriptor, ShimError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| ShimError::Decode(format!("descriptor set: {e}")))?;
    pool.get_message_by_name(full_name)
        .ok_or_else(|| ShimError::UnknownName(full_name.to_owned()))
}

/// Protobuf bytes of `full_name` → proto3 JSON (lowerCamelCase, base64 bytes, 64-bit integers as
/// strings, enums as numbers, defaults omitted).
pub(crate) fn message_to_json(full_name: &str, bytes: &[u8]) -> Result<Value, ShimError> {
    let message = DynamicMessage::decode(descriptor(full_name)?, bytes)
        .map_err(|e| ShimError::Decode(e.to_string()))?;
    let options = SerializeOptions::new()
        .use_enum_numbers(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| ShimError::Decode(e.to_string()))
}

/// proto3 JSON → protobuf bytes of `full_name` (accepts either field-name style, enums by name
/// or number, 64-bit integers as strings or numbers).
pub(crate) fn json_to_message(full_name: &str, json: &Value) -> Result<Vec<u8>, ShimError> {
    let message = DynamicMessage::deserialize(descriptor(full_name)?, json.clone())
        .map_err(|e| ShimError::Json(e.to_string()))?;
    Ok(message.encode_to_vec())
}

/// Decodes with the library's type for `name` and encodes again, so only what the library
/// accepts passes.
fn through_library(name: &str, bytes: &[u8]) -> Result<Vec<u8>, ShimError> {
    fn plain<M: Message + Default>(bytes: &[u8]) -> Result<Vec<u8>, ShimError> {
        M::decode(bytes)
            .map(|m| m.encode_to_vec())
            .map_err(|e| ShimError::Decode(e.to_string()))
    }
    match name {
        "d2m.ClientUrlInfo" => ClientUrlInfo::decode(bytes)
            .map(|info| info.encode())
            .map_err(|e| ShimError::Decode(e.to_string())),
        "d2d.Envelope" => plain::<proto::d2d::Envelope>(bytes),
        // d2d types join when the d2d schema lands.
        "d2d.DeviceInfo" => plain::<proto::d2d::DeviceInfo>(bytes),
        "d2d.SharedDeviceData" => plain::<proto::d2d::SharedDeviceData>(bytes),
        "d2d.TransactionScope" => plain::<proto::d2d::TransactionScope>(bytes),
        "common.BlobData" => plain::<proto::common::BlobData>(bytes),
        "common.Timespan" => plain::<proto::common::Timespan>(bytes),
        "common.Resolution" => plain::<proto::common::Resolution>(bytes),
        "csp_e2e.EditMessage" => plain::<proto::csp_e2e::EditMessage>(bytes),
        "csp_e2e.DeleteMessage" => plain::<proto::csp_e2e::DeleteMessage>(bytes),
        "csp_e2e.GroupCallStart" => plain::<proto::csp_e2e::GroupCallStart>(bytes),
        "csp_e2e.Reaction" => plain::<proto::csp_e2e::Reaction>(bytes),
        "csp_e2e.WorkSyncDelta" => plain::<proto::csp_e2e::WorkSyncDelta>(bytes),
        "sync.Contact" => plain::<proto::sync::Contact>(bytes),
        "sync.Group" => plain::<proto::sync::Group>(bytes),
        "sync.UserProfile" => plain::<proto::sync::UserProfile>(bytes),
        "sync.ThreemaWorkCredentials" => plain::<proto::sync::ThreemaWorkCredentials>(bytes),
        other => Err(ShimError::UnknownName(other.to_owned())),
    }
}

/// `proto-decode <name> <hex>` → the message as proto3 JSON.
pub fn proto_decode(name: &str, bytes: &[u8]) -> Result<Value, ShimError> {
    let canonical = through_library(name, bytes)?;
    message_to_json(name, &canonical)
}

/// `proto-encode <name> <json>` → `{hex}`.
pub fn proto_encode(name: &str, json: &Value) -> Result<Value, ShimError> {
    if !PROTO_NAMES.contains(&name) {
        return Err(ShimError::UnknownName(name.to_owned()));
    }
    let bytes = json_to_message(name, json)?;
    let canonical = through_library(name, &bytes)?;
    Ok(json!({ "hex": hex::encode(canonical) }))
}
