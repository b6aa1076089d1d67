//! The delivery-receipt body (spec §9.5): `status u8 ‖ n × message-id u64-le`.
//!
//! A receipt must name at least one message: an empty list says nothing, so it is refused on
//! both sides rather than silently accepted.

use crate::codec::{Reader, Truncated};

/// Length of one message id in the list.
const MESSAGE_ID_LEN: usize = 8;

/// The status a delivery receipt reports (spec §9.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DeliveryStatus {
    /// The message arrived on the receiver's device.
    Received = 1,
    /// The receiver read the message.
    Read = 2,
    /// The receiver reacted with "acknowledge" (thumbs up).
    Acknowledged = 3,
    /// The receiver reacted with "decline" (thumbs down).
    Declined = 4,
}

impl TryFrom<u8> for DeliveryStatus {
    type Error = ReceiptError;

    fn try_from(value: u8) -> Result<Self, ReceiptError> {
        match value {
            1 => Ok(Self::Received),
            2 => Ok(Self::Read),
            3 => Ok(Self::Acknowledged),
            4 => Ok(Self::Declined),
            other => Err(ReceiptError::UnknownStatus(other)),
        }
    }
}

/// Why a delivery receipt is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// No status byte.
    #[error("delivery receipt: {0}")]
    Truncated(#[from] Truncated),
    /// The status byte is none of the known statuses (unsupported).
    #[error("delivery receipt: unknown status {0}")]
    UnknownStatus(u8),
    /// The id list is not a whole number of 8-byte ids (malformed).
    #[error("delivery receipt: id list of {0} bytes is not a multiple of 8")]
    IdListLength(usize),
    /// The receipt names no message (well-formed but meaningless).
    #[error("delivery receipt names no message")]
    NoMessageIds,
}

/// A delivery receipt for one or more messages of the same conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    status: DeliveryStatus,
    message_ids: Vec<u64>,
}

impl DeliveryReceipt {
    /// A receipt for `message_ids`, which must not be empty.
    pub fn new(status: DeliveryStatus, message_ids: Vec<u64>) -> Result<Self, ReceiptError> {
        if message_ids.is_empty() {
            return Err(ReceiptError::NoMessageIds);
        }
        Ok(Self {
            status,
            message_ids,
        })
    }

    /// The reported status.
    #[must_use]
    pub const fn status(&self) -> DeliveryStatus {
        self.status
    }

    /// The messages the status applies to (never empty).
    #[must_use]
    pub fn message_ids(&self) -> &[u64] {
        &self.message_ids
    }

    /// The body bytes for an e2e container of type `DELIVERY_RECEIPT`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + MESSAGE_ID_LEN * self.message_ids.len());
        out.push(self.status as u8);
        for id in &self.message_ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// Reads a delivery-receipt body.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let mut reader = Reader::new(bytes);
        let status = DeliveryStatus::try_from(reader.u8()?)?;
        let ids = reader.rest();
        if ids.len() % MESSAGE_ID_LEN != 0 {
            return Err(ReceiptError::IdListLength(ids.len()));
        }
        let message_ids = ids
            .chunks_exact(MESSAGE_ID_LEN)
            .map(|chunk| {
                let mut id = [0_u8; MESSAGE_ID_LEN];
                id.copy_from_slice(chunk);
                u64::from_le_bytes(id)
            })
            .collect();
        Self::new(status, message_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_status() -> impl Strategy<Value = DeliveryStatus> {
        prop_oneof![
            Just(DeliveryStatus::Received),
            Just(DeliveryStatus::Read),
            Just(DeliveryStatus::Acknowledged),
            Just(DeliveryStatus::Declined),
        ]
    }

    proptest! {
        #[test]
        fn delivery_receipt_round_trips(status in arb_status(), ids in proptest::collection::vec(any::<u64>(), 1..50)) {
            let receipt = DeliveryReceipt::new(status, ids).unwrap();
            let encoded = receipt.encode();
            prop_assert_eq!(encoded.len(), 1 + 8 * receipt.message_ids().len());
            prop_assert_eq!(DeliveryReceipt::decode(&encoded).unwrap(), receipt);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = DeliveryReceipt::decode(&bytes);
        }
    }

    #[test]
    fn layout_is_status_then_little_endian_ids() {
        let receipt =
            DeliveryReceipt::new(DeliveryStatus::Read, vec![0x0102_0304_0506_0708, 1]).unwrap();
        let expected = hex::decode(concat!("02", "0807060504030201", "0100000000000000")).unwrap();
        assert_eq!(receipt.encode(), expected);
        assert_eq!(DeliveryReceipt::decode(&expected).unwrap(), receipt);
    }

    #[test]
    fn status_values_match_the_spec() {
        for (byte, status) in [
            (1, DeliveryStatus::Received),
            (2, DeliveryStatus::Read),
            (3, DeliveryStatus::Acknowledged),
            (4, DeliveryStatus::Declined),
        ] {
            assert_eq!(DeliveryStatus::try_from(byte), Ok(status));
            assert_eq!(status as u8, byte);
        }
    }

    #[test]
    fn unknown_status_is_rejected() {
        for byte in [0_u8, 5, 0xff] {
            let mut bytes = vec![byte];
            bytes.extend_from_slice(&7_u64.to_le_bytes());
            assert_eq!(
                DeliveryReceipt::decode(&bytes),
                Err(ReceiptError::UnknownStatus(byte))
            );
        }
    }

    #[test]
    fn partial_message_id_is_rejected() {
        assert_eq!(
            DeliveryReceipt::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
            Err(ReceiptError::IdListLength(9))
        );
        assert_eq!(
            DeliveryReceipt::decode(&[1, 0, 0, 0]),
            Err(ReceiptError::IdListLength(3))
        );
    }

    #[test]
    fn empty_input_is_truncated() {
        assert!(matches!(
            DeliveryReceipt::decode(&[]),
            Err(ReceiptError::Truncated(_))
        ));
    }

    #[test]
    fn receipt_without_ids_is_refused_on_both_sides() {
        assert_eq!(
            DeliveryReceipt::decode(&[1]),
            Err(ReceiptError::NoMessageIds)
        );
        assert_eq!(
            DeliveryReceipt::new(DeliveryStatus::Received, vec![]),
            Err(ReceiptError::NoMessageIds)
        );
    }
}
