//! CSP payload checks: the payload container and every payload type under both message payload
//! versions, the message structs, the e2e and group containers, delivery receipts, login
//! extensions and the server-to-client unit splitter.

use tandem_shared::csp::{
    CspError, CspPayload, DeliveryReceipt, E2eContainer, ExtensionError, Extensions,
    GroupCreatorContainer, GroupMemberContainer, LegacyMessage, MessagePayloadVersion,
    MessageWithMetadataBox, PayloadContainer, ServerUnitSplitter, MAX_EXTENSIONS_LEN,
    MAX_PAYLOAD_CONTAINER_LEN,
};
use tandem_shared::proto::csp_e2e;

use super::d2d::prost_round_trip;
use super::input::{rng, Chunking, Input};

/// Every CSP payload decoder on the same bytes; each decoded value re-encodes to bytes that
/// decode to the same value (byte for byte where the format has a single encoding).
pub fn csp_payload(data: &[u8]) {
    payload(data);
    message_structs(data);
    e2e(data);
    receipt(data);
    groups(data);
    extensions(data);
    splitter(data);
    prost_round_trip::<csp_e2e::MessageMetadata>(data);
}

fn payload(data: &[u8]) {
    if let Ok(container) = PayloadContainer::decode(data) {
        let encoded = container.encode();
        assert_eq!(encoded.as_ref().map(Vec::len), Ok(data.len()));
        assert_eq!(encoded.as_ref().map(|e| e.get(4..)), Ok(data.get(4..)));
    }
    for version in [
        MessagePayloadVersion::Legacy,
        MessagePayloadVersion::WithMetadataBox,
    ] {
        let Ok(payload) = CspPayload::decode(data, version) else {
            continue;
        };
        assert_eq!(data.first().copied(), Some(payload.payload_type().as_u8()));
        let _ = format!("{payload:?}");
        let encoded = payload.encode();
        assert!(
            encoded.is_ok(),
            "decoded {payload:?} does not re-encode: {encoded:?}"
        );
        if let Ok(encoded) = encoded {
            assert!(encoded.len() <= MAX_PAYLOAD_CONTAINER_LEN);
            assert_eq!(CspPayload::decode(&encoded, version).as_ref(), Ok(&payload));
        }
    }
}

fn message_structs(data: &[u8]) {
    if let Ok(message) = MessageWithMetadataBox::decode(data) {
        let _ = format!("{message:?}");
        let encoded = message.encode();
        assert_eq!(encoded.as_ref().map(Vec::len), Ok(data.len()));
        assert_eq!(encoded.as_ref().map(Vec::len), Ok(message.encoded_len()));
        if let Ok(encoded) = encoded {
            assert_eq!(
                MessageWithMetadataBox::decode(&encoded).as_ref(),
                Ok(&message)
            );
            // Only the reserved byte at offset 29 may differ.
            assert_eq!(encoded.get(..29), data.get(..29));
            assert_eq!(encoded.get(30..), data.get(30..));
        }
        let legacy = LegacyMessage::try_from(message.clone());
        assert_eq!(legacy.is_ok(), message.metadata.is_empty());
    }
    if let Ok(legacy) = LegacyMessage::decode(data) {
        let _ = format!("{legacy:?}");
        let encoded = legacy.encode();
        assert_eq!(encoded.len(), data.len());
        assert_eq!(encoded.len(), legacy.encoded_len());
        assert_eq!(LegacyMessage::decode(&encoded).as_ref(), Ok(&legacy));
        let widened = MessageWithMetadataBox::from(legacy.clone());
        assert_eq!(LegacyMessage::try_from(widened), Ok(legacy));
    }
}

fn e2e(data: &[u8]) {
    if let Ok(container) = E2eContainer::decode(data) {
        let encoded = container.encode(&mut rng(0xe2e));
        assert_eq!(E2eContainer::decode(&encoded).as_ref(), Ok(&container));
    }
}

fn receipt(data: &[u8]) {
    if let Ok(receipt) = DeliveryReceipt::decode(data) {
        assert!(!receipt.message_ids().is_empty());
        assert_eq!(receipt.encode(), data);
    }
}

fn groups(data: &[u8]) {
    if let Ok(group) = GroupCreatorContainer::decode(data) {
        assert_eq!(group.encode(), data);
    }
    if let Ok(group) = GroupMemberContainer::decode(data) {
        assert_eq!(group.encode(), data);
    }
}

/// Decoded extensions re-encode (known types once each, in a fixed order, unknown ones dropped)
/// unless they no longer fit a login.
fn extensions(data: &[u8]) {
    let Ok(extensions) = Extensions::decode(data) else {
        return;
    };
    match extensions.encode() {
        Ok(encoded) => {
            assert!(encoded.len() <= data.len());
            assert_eq!(Extensions::decode(&encoded).as_ref(), Ok(&extensions));
        }
        Err(ExtensionError::TooLarge(len)) => assert!(len > MAX_EXTENSIONS_LEN),
        Err(e) => panic!("decoded extensions do not re-encode: {e}"),
    }
}

/// The splitter cuts the same units whatever the chunking, and the units are the stream.
fn splitter(data: &[u8]) {
    let mut input = Input::new(data);
    let chunking = Chunking::read(&mut input);
    let stream = input.rest();
    let whole = split(stream, &Chunking::whole());
    let chunked = split(stream, &chunking);
    assert_eq!(whole, chunked);
    let (units, result, partial) = whole;
    let joined: Vec<u8> = units.concat();
    assert!(stream.starts_with(&joined));
    if result.is_ok() {
        assert_eq!(partial, joined.len() < stream.len());
    }
}

type Split = (Vec<Vec<u8>>, Result<(), CspError>, bool);

fn split(stream: &[u8], chunking: &Chunking) -> Split {
    let mut splitter = ServerUnitSplitter::new();
    let mut result = Ok(());
    for chunk in chunking.split(stream) {
        result = splitter.feed(chunk);
        if result.is_err() {
            assert_eq!(splitter.feed(b"x"), Err(CspError::AfterFailure));
            break;
        }
    }
    let units = core::iter::from_fn(|| splitter.pop()).collect();
    (units, result, splitter.has_partial_unit())
}
