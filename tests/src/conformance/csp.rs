//! CSP login structures of protocol version 23 (spec §9.3, §12): the extensions plaintext with
//! its feature byte, and the login-ack plaintext in either layout.

use serde_json::{json, Map, Value};
use tandem_shared::csp::{Extensions, LoginAck};

use super::ShimError;

/// `csp-extensions-decode <hex>` → the present extensions; `features` carries the raw byte and
/// what it means (bit 0 message-with-metadata-box, bit 1 receives echo requests).
pub fn csp_extensions_decode(bytes: &[u8]) -> Result<Value, ShimError> {
    let ext = Extensions::decode(bytes).map_err(|e| ShimError::Decode(e.to_string()))?;
    let mut out = Map::new();
    if let Some(info) = ext.client_info {
        out.insert("clientInfo".into(), json!(info));
    }
    if let Some(id) = ext.csp_device_id {
        out.insert("cspDeviceId".into(), json!(id.to_string()));
    }
    if let Some(features) = ext.features {
        out.insert(
            "features".into(),
            json!({
                "bits": features.0,
                "messageWithMetadataBox": features.message_with_metadata_box(),
                "receivesEchoRequests": features.receives_echo_requests(),
            }),
        );
    }
    if let Some(cookie) = ext.device_cookie {
        out.insert("deviceCookie".into(), json!(hex::encode(cookie.0)));
    }
    Ok(Value::Object(out))
}

/// `csp-login-ack-decode <hex>` (the 16 plaintext bytes) → `{serverTimeMs, queuedMessages}`;
/// `serverTimeMs` is a decimal string, `null` when the server sent none (the old layout).
pub fn csp_login_ack_decode(bytes: &[u8]) -> Result<Value, ShimError> {
    let ack = LoginAck::decode(bytes).map_err(|e| ShimError::Decode(e.to_string()))?;
    Ok(json!({
        "serverTimeMs": ack.server_time_ms().map(|t| t.to_string()),
        "queuedMessages": ack.queued_messages,
    }))
}
