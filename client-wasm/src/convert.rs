//! JS shapes of the core's values. Ids are strings so they work as map keys and survive JSON:
//! conversations `contact/ABCD1234`, `group/ABCD1234/<16 hex>`, `list/<16 hex>`; messages
//! `ABCD1234/<16 hex>`; 64-bit ids as 16 lower-case hex digits.

use std::collections::BTreeSet;

use js_sys::Array;
use tandem_shared::app::model::{ReadReceiptPolicy, TypingIndicatorPolicy, UserState};
use tandem_shared::app::{
    Contact, ConversationId, ConversationSummary, DistributionList, Dropped, Group, GroupId,
    Identity, Message, MessageKey, MessageState, Settings,
};
use tandem_shared::device::{ConnectionState, DeviceEntry};
use tandem_shared::proto::sync;
use wasm_bindgen::JsValue;

use crate::error::ClientError;
use crate::js::{get, strings, Obj};

/// A 64-bit id as 16 hex digits.
#[must_use]
pub fn id_to_string(id: u64) -> String {
    format!("{id:016x}")
}

/// A 64-bit id from its hex form.
pub fn id_from_string(what: &'static str, text: &str) -> Result<u64, ClientError> {
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|_| !text.is_empty() && text.len() <= 16)
        .ok_or_else(|| ClientError::invalid(what, format!("{text:?} is not a hex id")))
}

/// An identity from JS text.
pub fn identity(text: &str) -> Result<Identity, ClientError> {
    text.parse().map_err(|_| {
        ClientError::invalid(
            "identity",
            format!("{text:?} must be 8 characters of 0-9 and A-Z (or * first)"),
        )
    })
}

/// A set of identities from a JS array of strings.
pub fn identities(value: &JsValue) -> Result<BTreeSet<Identity>, ClientError> {
    if !Array::is_array(value) {
        return Err(ClientError::invalid(
            "members",
            "expected an array of identities",
        ));
    }
    Array::from(value)
        .iter()
        .map(|v| {
            v.as_string()
                .ok_or_else(|| ClientError::invalid("members", "expected strings"))
                .and_then(|s| identity(&s))
        })
        .collect()
}

/// `contact/ID`, `group/CREATOR/hex`, `list/hex`.
#[must_use]
pub fn conversation_to_string(id: &ConversationId) -> String {
    match id {
        ConversationId::Contact(identity) => format!("contact/{identity}"),
        ConversationId::Group(group) => format!("group/{}", group_to_string(group)),
        ConversationId::DistributionList(id) => format!("list/{}", id_to_string(*id)),
    }
}

/// The inverse of [`conversation_to_string`].
pub fn conversation_from_string(text: &str) -> Result<ConversationId, ClientError> {
    let bad = || {
        ClientError::invalid(
            "conversation",
            format!("{text:?}: expected contact/ID, group/CREATOR/HEXID or list/HEXID"),
        )
    };
    match text.split_once('/') {
        Some(("contact", id)) => Ok(ConversationId::Contact(identity(id)?)),
        Some(("group", rest)) => Ok(ConversationId::Group(
            group_from_string(rest).map_err(|_| bad())?,
        )),
        Some(("list", id)) => Ok(ConversationId::DistributionList(id_from_string(
            "conversation",
            id,
        )?)),
        _ => Err(bad()),
    }
}

/// `CREATOR/hex`.
#[must_use]
pub fn group_to_string(id: &GroupId) -> String {
    format!("{}/{}", id.creator, id_to_string(id.id))
}

/// The inverse of [`group_to_string`].
pub fn group_from_string(text: &str) -> Result<GroupId, ClientError> {
    let (creator, id) = identity_and_id("group", text)?;
    Ok(GroupId { creator, id })
}

/// The inverse of [`message_key_to_string`].
pub fn message_key_from_string(text: &str) -> Result<MessageKey, ClientError> {
    let (sender, id) = identity_and_id("message", text)?;
    Ok(MessageKey { sender, id })
}

/// `IDENTITY/HEXID`, as groups and messages are named.
fn identity_and_id(what: &'static str, text: &str) -> Result<(Identity, u64), ClientError> {
    let (identity_text, id) = text
        .split_once('/')
        .ok_or_else(|| ClientError::invalid(what, "expected ID/HEXID"))?;
    Ok((identity(identity_text)?, id_from_string(what, id)?))
}

/// `SENDER/hex`.
#[must_use]
pub fn message_key_to_string(key: &MessageKey) -> String {
    format!("{}/{}", key.sender, id_to_string(key.id))
}

/// The state's name in the API.
#[must_use]
pub const fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Pending => "pending",
        MessageState::Sent => "sent",
        MessageState::Delivered => "delivered",
        MessageState::Received => "received",
        MessageState::Read => "read",
    }
}

/// Unix ms as a JS number (exact below 2^53, i.e. for the next 285 000 years).
#[allow(clippy::cast_precision_loss)]
fn ms(value: u64) -> f64 {
    value as f64
}

/// Unix ms, or null.
fn optional_ms(value: Option<u64>) -> JsValue {
    value.map_or(JsValue::NULL, |v| ms(v).into())
}

/// Lower-case hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    tandem_shared::encoding::hex_encode(bytes)
}

/// Why something from the network was dropped, as a short name for diagnostics.
#[must_use]
pub const fn dropped_name(reason: &Dropped) -> &'static str {
    match reason {
        Dropped::NotForUs => "notForUs",
        Dropped::ReplayedNonce => "replayedNonce",
        Dropped::Blocked(_) => "blocked",
        Dropped::UnknownSender(_) => "unknownSender",
        Dropped::Undecryptable(_) => "undecryptable",
        Dropped::BadBody(_) => "badBody",
        Dropped::Unsupported(_) => "unsupported",
        Dropped::UnknownMessage(_) => "unknownMessage",
        Dropped::ReplayedEnvelope => "replayedEnvelope",
        Dropped::UndecryptableEnvelope(_) => "undecryptableEnvelope",
        Dropped::InvalidEnvelope(_) => "invalidEnvelope",
        _ => "other",
    }
}

/// A message.
#[must_use]
pub fn message(m: &Message) -> JsValue {
    Obj::new()
        .set("key", message_key_to_string(&m.key))
        .set("conversation", conversation_to_string(&m.conversation))
        .set("sender", m.key.sender.as_str())
        .set(
            "outgoing",
            m.direction == tandem_shared::app::Direction::Outgoing,
        )
        .set("text", m.text.as_str())
        .set("createdAt", ms(m.created_at))
        .set("state", state_name(m.state))
        .set("seq", ms(m.seq))
        .set("editedAt", optional_ms(m.edited_at))
        .set("deletedAt", optional_ms(m.deleted_at))
        .set(
            "reactions",
            m.reactions
                .iter()
                .map(|(who, emoji)| {
                    Obj::new()
                        .set("identity", who.as_str())
                        .set("emoji", emoji.as_str())
                        .build()
                })
                .collect::<Array>(),
        )
        .build()
}

/// A contact.
#[must_use]
pub fn contact(c: &Contact) -> JsValue {
    Obj::new()
        .set("identity", c.identity.as_str())
        .set("displayName", c.display_name())
        .set("firstName", c.first_name.as_str())
        .set("lastName", c.last_name.as_str())
        .set("nickname", c.nickname.as_str())
        .set("publicKey", hex(&c.public_key.0))
        .set("createdAt", ms(c.created_at))
        .build()
}

/// A group.
#[must_use]
pub fn group(g: &Group) -> JsValue {
    let state = match g.user_state {
        UserState::Member => "member",
        UserState::Kicked => "kicked",
        UserState::Left => "left",
    };
    Obj::new()
        .set("id", group_to_string(&g.id))
        .set(
            "conversation",
            conversation_to_string(&ConversationId::Group(g.id)),
        )
        .set("creator", g.id.creator.as_str())
        .set("name", g.name.as_str())
        .set("members", strings(g.members.iter().map(Identity::as_str)))
        .set("userState", state)
        .set("createdAt", ms(g.created_at))
        .build()
}

/// A distribution list.
#[must_use]
pub fn distribution_list(l: &DistributionList) -> JsValue {
    Obj::new()
        .set("id", id_to_string(l.id))
        .set(
            "conversation",
            conversation_to_string(&ConversationId::DistributionList(l.id)),
        )
        .set("name", l.name.as_str())
        .set("members", strings(l.members.iter().map(Identity::as_str)))
        .set("createdAt", ms(l.created_at))
        .build()
}

/// A conversation list entry.
#[must_use]
pub fn summary(s: &ConversationSummary, last: Option<&Message>) -> JsValue {
    Obj::new()
        .set("id", conversation_to_string(&s.id))
        .set("unread", ms(s.unread as u64))
        .set("lastMessage", last.map_or(JsValue::NULL, message))
        .build()
}

/// The settings the API exposes (absent fields read as the defaults).
#[must_use]
pub fn settings(s: &Settings) -> JsValue {
    let blocked =
        s.0.blocked_identities
            .as_ref()
            .map(|b| strings(b.identities.iter().map(String::as_str)))
            .unwrap_or_else(|| Array::new().into());
    Obj::new()
        .set("readReceipts", s.sends_read_receipts())
        .set("typingIndicators", s.sends_typing_indicators())
        .set("blockUnknown", s.blocks_unknown())
        .set("blockedIdentities", blocked)
        .build()
}

/// A partial settings update from `{readReceipts?, typingIndicators?, blockUnknown?,
/// blockedIdentities?}`.
pub fn settings_update(value: &JsValue) -> Result<sync::Settings, ClientError> {
    let flag = |key: &'static str| -> Result<Option<bool>, ClientError> {
        get(value, key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| ClientError::invalid(key, "expected a boolean"))
            })
            .transpose()
    };
    let mut update = sync::Settings::default();
    if let Some(on) = flag("readReceipts")? {
        let policy = if on {
            ReadReceiptPolicy::SendReadReceipt
        } else {
            ReadReceiptPolicy::DontSendReadReceipt
        };
        update.read_receipt_policy = Some(policy.into());
    }
    if let Some(on) = flag("typingIndicators")? {
        let policy = if on {
            TypingIndicatorPolicy::SendTypingIndicator
        } else {
            TypingIndicatorPolicy::DontSendTypingIndicator
        };
        update.typing_indicator_policy = Some(policy.into());
    }
    if let Some(block) = flag("blockUnknown")? {
        use sync::settings::UnknownContactPolicy;
        let policy = if block {
            UnknownContactPolicy::BlockUnknown
        } else {
            UnknownContactPolicy::AllowUnknown
        };
        update.unknown_contact_policy = Some(policy.into());
    }
    if let Some(list) = get(value, "blockedIdentities") {
        let ids = identities(&list)?;
        update.blocked_identities = Some(tandem_shared::proto::common::Identities {
            identities: ids.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(update)
}

/// A device of the group.
#[must_use]
pub fn device(entry: &DeviceEntry, own_id: u64) -> JsValue {
    let (label, platform, details, version) = match &entry.info {
        Ok(info) => (
            info.label.clone(),
            info.platform.as_str_name().to_ascii_lowercase(),
            info.platform_details.clone(),
            info.app_version.clone(),
        ),
        Err(_) => (
            String::new(),
            "unknown".to_owned(),
            String::new(),
            String::new(),
        ),
    };
    let (online, since) = match entry.connection_state {
        ConnectionState::ConnectedSince(at) => (JsValue::TRUE, JsValue::from(ms(at))),
        ConnectionState::LastDisconnectAt(at) => (JsValue::FALSE, JsValue::from(ms(at))),
        ConnectionState::Unknown => (JsValue::NULL, JsValue::NULL),
    };
    Obj::new()
        .set("id", id_to_string(entry.device_id))
        .set("thisDevice", entry.device_id == own_id)
        .set("label", label)
        .set("platform", platform)
        .set("platformDetails", details)
        .set("appVersion", version)
        .set("online", online)
        .set("since", since)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_round_trip_through_their_strings() {
        let alice: Identity = "ALICE123".parse().unwrap();
        for id in [
            ConversationId::Contact(alice),
            ConversationId::Group(GroupId {
                creator: alice,
                id: 0x0123_4567_89ab_cdef,
            }),
            ConversationId::DistributionList(7),
        ] {
            let text = conversation_to_string(&id);
            assert_eq!(conversation_from_string(&text).unwrap(), id, "{text}");
        }
        assert_eq!(
            conversation_to_string(&ConversationId::DistributionList(7)),
            "list/0000000000000007"
        );
    }

    #[test]
    fn malformed_conversation_ids_are_refused_with_the_expected_shapes() {
        for text in [
            "",
            "contact/",
            "contact/abc",
            "group/ALICE123",
            "list/xyz",
            "chat/ALICE123",
        ] {
            let e = conversation_from_string(text).unwrap_err().to_string();
            assert!(e.starts_with("invalid "), "{text}: {e}");
        }
    }

    #[test]
    fn message_keys_round_trip_and_malformed_ones_are_refused() {
        let key = MessageKey {
            sender: "ALICE123".parse().unwrap(),
            id: 0x0123_4567_89ab_cdef,
        };
        let text = message_key_to_string(&key);
        assert_eq!(text, "ALICE123/0123456789abcdef");
        assert_eq!(message_key_from_string(&text).unwrap(), key);
        for bad in ["", "ALICE123", "ALICE123/", "alice/01", "ALICE123/xyz"] {
            let e = message_key_from_string(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid "), "{bad}: {e}");
        }
    }

    #[test]
    fn hex_matches_a_known_encoding() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn hex_ids_longer_than_sixteen_digits_are_refused() {
        assert!(id_from_string("id", "00000000000000001").is_err());
        assert_eq!(id_from_string("id", "ff").unwrap(), 255);
    }
}
