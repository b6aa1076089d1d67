//! d2m checks: the container with every payload type, and the four structbuf payloads alone.

use tandem_shared::crypto::{PublicKey, SecretKey};
use tandem_shared::d2m::{
    self, CloseCode, Container, D2mEncodeError, D2mMessage, PayloadEncoding, Reflect, ReflectAck,
    Reflected, ReflectedAck, MAX_CONTAINER_LEN,
};

use super::input::Input;

/// `D2mMessage::decode`; whatever decodes re-encodes to a container that decodes to the same
/// message. A protobuf payload may grow on re-encoding (a negative `int32` sent as 5 bytes takes
/// 10), so only it may be refused as too long; structbuf and proxy payloads keep their length.
pub fn d2m_container(data: &[u8]) {
    if let Ok(container) = Container::decode(data) {
        let encoded = container.encode();
        assert_eq!(
            encoded.as_ref().map(Vec::len),
            Ok(data.len()),
            "container re-encodes to its own length"
        );
        if let Ok(encoded) = encoded {
            assert_eq!(Container::decode(&encoded), Ok(container));
        }
    }

    let Ok(message) = D2mMessage::decode(data) else {
        return;
    };
    assert_eq!(data.first().copied(), Some(message.payload_type().as_u8()));
    let _ = format!("{message:?}");
    match message.encode() {
        Ok(encoded) => {
            assert!(encoded.len() <= MAX_CONTAINER_LEN);
            assert_eq!(D2mMessage::decode(&encoded).as_ref(), Ok(&message));
            if message.payload_type().encoding() != PayloadEncoding::Protobuf {
                assert_eq!(encoded.len(), data.len(), "structbuf keeps its length");
            }
        }
        Err(D2mEncodeError::TooLong { payload_type, len }) => {
            assert_eq!(payload_type.encoding(), PayloadEncoding::Protobuf);
            assert!(len > MAX_CONTAINER_LEN);
        }
        Err(e) => panic!("decoded {message:?} does not re-encode: {e}"),
    }
    check_handshake(&message);
}

/// What the device and the mediator do with a decoded hello: they must refuse, never panic.
fn check_handshake(message: &D2mMessage) {
    match message {
        D2mMessage::ServerHello(hello) => {
            if let Ok((esk, _challenge)) = d2m::validate_server_hello(hello) {
                assert!(SecretKey::from_bytes([0x11; 32])
                    .box_key_contributory(&esk)
                    .is_ok());
            }
        }
        D2mMessage::ClientHello(hello) => {
            let esk = SecretKey::from_bytes([0x11; 32]);
            let group = PublicKey([0x09; 32]);
            assert!(d2m::verify(&esk, &group, &[0x22; 32], &hello.response).is_err());
        }
        _ => {}
    }
}

/// Each structbuf decoder on the raw payload: a decoded value re-encodes to the same length and
/// decodes to itself; a close code maps back to its number.
pub fn d2m_structbuf(data: &[u8]) {
    if let Ok(reflect) = Reflect::decode(data) {
        let mut out = Vec::new();
        assert!(reflect.encode_into(&mut out).is_ok());
        assert_eq!(out.len(), data.len());
        assert_eq!(out.len(), reflect.encoded_len());
        assert_eq!(Reflect::decode(&out).as_ref(), Ok(&reflect));
        assert_same_fields(&out, data, 8, reflect.header_length);
    }
    if let Ok(reflected) = Reflected::decode(data) {
        let mut out = Vec::new();
        assert!(reflected.encode_into(&mut out).is_ok());
        assert_eq!(out.len(), data.len());
        assert_eq!(out.len(), reflected.encoded_len());
        assert_eq!(Reflected::decode(&out).as_ref(), Ok(&reflected));
        assert_same_fields(&out, data, 16, reflected.header_length);
    }
    if let Ok(ack) = ReflectAck::decode(data) {
        let mut out = Vec::new();
        ack.encode_into(&mut out);
        assert_eq!(out.len(), data.len());
        assert_eq!(
            out.get(4..),
            data.get(4..),
            "only the reserved bytes may differ"
        );
        assert_eq!(ReflectAck::decode(&out), Ok(ack));
    }
    if let Ok(ack) = ReflectedAck::decode(data) {
        let mut out = Vec::new();
        ack.encode_into(&mut out);
        assert_eq!(out.len(), data.len());
        assert_eq!(
            out.get(4..),
            data.get(4..),
            "only the reserved bytes may differ"
        );
        assert_eq!(ReflectedAck::decode(&out), Ok(ack));
    }
    let code = Input::new(data).u16();
    assert_eq!(CloseCode::from_u16(code).as_u16(), code);
}

/// A re-encoded `Reflect`/`Reflected` differs from its input only in the reserved byte and the
/// unknown header bytes past `known` (written as zeros): the fields and the envelope are kept.
fn assert_same_fields(encoded: &[u8], input: &[u8], known: usize, header_length: u8) {
    assert_eq!(encoded.first(), input.first(), "header length");
    assert_eq!(encoded.get(2..known), input.get(2..known), "flags and ids");
    let envelope = usize::from(header_length);
    assert_eq!(encoded.get(envelope..), input.get(envelope..), "envelope");
    assert!(encoded
        .get(known..envelope)
        .is_some_and(|unknown| unknown.iter().all(|&b| b == 0)));
}
