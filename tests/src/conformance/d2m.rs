//! `d2m-decode` / `d2m-encode`: whole d2m containers ⇄ `{"type", "payload"}` JSON.
//!
//! Protobuf payloads use the proto3 JSON mapping (see [`super::json`]); structbuf payloads use
//! `headerLength`, `flags`, `reflectId` / `reflectedId`, `timestamp` (decimal string) and
//! `envelope` (base64); `Proxy` uses `data` (base64).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tandem_shared::d2m::{
    D2mMessage, PayloadEncoding, PayloadType, Reflect, ReflectAck, ReflectFlags, Reflected,
    ReflectedAck, REFLECTED_HEADER_LEN, REFLECT_HEADER_LEN,
};

use super::json::{json_to_message, message_to_json};
use super::ShimError;

/// `d2m-decode <container-hex>` → `{"type": <spec name>, "payload": <json>}`.
pub fn d2m_decode(container: &[u8]) -> Result<Value, ShimError> {
    let message = D2mMessage::decode(container).map_err(|e| ShimError::Decode(e.to_string()))?;
    let payload_type = message.payload_type();
    let payload = match &message {
        D2mMessage::Proxy(data) => json!({ "data": BASE64.encode(data) }),
        D2mMessage::Reflect(r) => json!({
            "headerLength": r.header_length,
            "flags": r.flags.0,
            "reflectId": r.reflect_id,
            "envelope": BASE64.encode(&r.envelope),
        }),
        D2mMessage::ReflectAck(a) => json!({
            "reflectId": a.reflect_id,
            "timestamp": a.timestamp.to_string(),
        }),
        D2mMessage::Reflected(r) => json!({
            "headerLength": r.header_length,
            "flags": r.flags.0,
            "reflectedId": r.reflected_id,
            "timestamp": r.timestamp.to_string(),
            "envelope": BASE64.encode(&r.envelope),
        }),
        D2mMessage::ReflectedAck(a) => json!({ "reflectedId": a.reflected_id }),
        _ => {
            // Protobuf payload: show what the library decoded, re-encoded canonically.
            let canonical = message
                .encode()
                .map_err(|e| ShimError::Encode(e.to_string()))?;
            let bytes = canonical.get(4..).unwrap_or_default();
            message_to_json(&format!("d2m.{}", payload_type.name()), bytes)?
        }
    };
    Ok(json!({ "type": payload_type.name(), "payload": payload }))
}

/// `d2m-encode '<json>'` → `{"hex"}` of the whole container.
pub fn d2m_encode(value: &Value) -> Result<Value, ShimError> {
    let name = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ShimError::Json("missing string field \"type\"".into()))?;
    let payload_type =
        PayloadType::from_name(name).ok_or_else(|| ShimError::UnknownName(name.to_owned()))?;
    let empty = Value::Object(Map::new());
    let payload = value.get("payload").unwrap_or(&empty);
    let message = match payload_type {
        PayloadType::Proxy => D2mMessage::Proxy(base64_field(payload, "data")?),
        PayloadType::Reflect => D2mMessage::Reflect(Reflect {
            header_length: uint_field(payload, "headerLength", u64::from(REFLECT_HEADER_LEN))?,
            flags: ReflectFlags(uint_field(payload, "flags", 0)?),
            reflect_id: uint_field(payload, "reflectId", 0)?,
            envelope: base64_field(payload, "envelope")?,
        }),
        PayloadType::ReflectAck => D2mMessage::ReflectAck(ReflectAck {
            reflect_id: uint_field(payload, "reflectId", 0)?,
            timestamp: uint_field(payload, "timestamp", 0)?,
        }),
        PayloadType::Reflected => D2mMessage::Reflected(Reflected {
            header_length: uint_field(payload, "headerLength", u64::from(REFLECTED_HEADER_LEN))?,
            flags: ReflectFlags(uint_field(payload, "flags", 0)?),
            reflected_id: uint_field(payload, "reflectedId", 0)?,
            timestamp: uint_field(payload, "timestamp", 0)?,
            envelope: base64_field(payload, "envelope")?,
        }),
        PayloadType::ReflectedAck => D2mMessage::ReflectedAck(ReflectedAck {
            reflected_id: uint_field(payload, "reflectedId", 0)?,
        }),
        other => {
            debug_assert_eq!(other.encoding(), PayloadEncoding::Protobuf);
            let bytes = json_to_message(&format!("d2m.{}", other.name()), payload)?;
            D2mMessage::decode_payload(other, &bytes)
                .map_err(|e| ShimError::Decode(e.to_string()))?
        }
    };
    let container = message
        .encode()
        .map_err(|e| ShimError::Encode(e.to_string()))?;
    // Everything the shim prints must be something the library itself decodes.
    D2mMessage::decode(&container).map_err(|e| ShimError::Decode(e.to_string()))?;
    Ok(json!({ "hex": hex::encode(container) }))
}

fn base64_field(payload: &Value, field: &str) -> Result<Vec<u8>, ShimError> {
    match payload.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => BASE64.decode(text).map_err(|e| {
            ShimError::Json(format!(
                "field {field:?} is not padded standard base64: {e}"
            ))
        }),
        Some(_) => Err(ShimError::Json(format!(
            "field {field:?} must be a base64 string"
        ))),
    }
}

/// An unsigned integer given as a JSON number or a decimal string, range-checked into `T`.
fn uint_field<T: TryFrom<u64>>(payload: &Value, field: &str, default: u64) -> Result<T, ShimError> {
    let raw = match payload.get(field) {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            ShimError::Json(format!("field {field:?} must be an unsigned integer"))
        })?,
        Some(Value::String(s)) => s.parse::<u64>().map_err(|_| {
            ShimError::Json(format!(
                "field {field:?} must be an unsigned decimal integer"
            ))
        })?,
        Some(_) => {
            return Err(ShimError::Json(format!(
                "field {field:?} must be a number or decimal string"
            )))
        }
    };
    T::try_from(raw).map_err(|_| ShimError::Json(format!("field {field:?} is out of range: {raw}")))
}
