//! Message flags of the `message-with-metadata-box` header (spec §9.5).
//!
//! Unknown bits are kept as they are: the byte travels through the chat server unchanged, and a
//! receiver that does not know a bit simply ignores it.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

/// The flags byte at offset 28 of a message header (spec §9.5 "Message flags").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageFlags(pub u8);

impl MessageFlags {
    /// No flag set.
    pub const NONE: Self = Self(0x00);
    /// The server should send a push notification to the receiver.
    pub const SEND_PUSH: Self = Self(0x01);
    /// The server must not queue the message if the receiver is offline.
    pub const DONT_QUEUE: Self = Self(0x02);
    /// The server sends no message-ack, and the receiver must not send one either.
    pub const DONT_ACK: Self = Self(0x04);
    /// Reserved: formerly marked group messages. Never set by Tandem, ignored on receipt.
    pub const RESERVED_GROUP: Self = Self(0x10);
    /// Short-lived queuing (60 s) / immediate delivery; the server also overwrites created-at.
    pub const SHORT_LIVED: Self = Self(0x20);
    /// The receiver must not send automatic delivery receipts.
    pub const NO_DELIVERY_RECEIPTS: Self = Self(0x80);

    /// The raw byte.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` added.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `self` with the bits of `other` cleared.
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl BitOr for MessageFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

impl BitOrAssign for MessageFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.with(rhs);
    }
}

impl From<u8> for MessageFlags {
    fn from(bits: u8) -> Self {
        Self(bits)
    }
}

impl From<MessageFlags> for u8 {
    fn from(flags: MessageFlags) -> Self {
        flags.0
    }
}

impl fmt::Debug for MessageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(MessageFlags, &str); 6] = [
            (MessageFlags::SEND_PUSH, "SEND_PUSH"),
            (MessageFlags::DONT_QUEUE, "DONT_QUEUE"),
            (MessageFlags::DONT_ACK, "DONT_ACK"),
            (MessageFlags::RESERVED_GROUP, "RESERVED_GROUP"),
            (MessageFlags::SHORT_LIVED, "SHORT_LIVED"),
            (MessageFlags::NO_DELIVERY_RECEIPTS, "NO_DELIVERY_RECEIPTS"),
        ];
        write!(f, "MessageFlags({:#04x}", self.0)?;
        let mut rest = *self;
        let mut sep = ": ";
        for (flag, name) in NAMES {
            if self.contains(flag) {
                write!(f, "{sep}{name}")?;
                sep = " | ";
                rest = rest.without(flag);
            }
        }
        if rest.0 != 0 {
            write!(f, "{sep}{:#04x}", rest.0)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_match_the_spec_table() {
        assert_eq!(MessageFlags::SEND_PUSH.bits(), 0x01);
        assert_eq!(MessageFlags::DONT_QUEUE.bits(), 0x02);
        assert_eq!(MessageFlags::DONT_ACK.bits(), 0x04);
        assert_eq!(MessageFlags::RESERVED_GROUP.bits(), 0x10);
        assert_eq!(MessageFlags::SHORT_LIVED.bits(), 0x20);
        assert_eq!(MessageFlags::NO_DELIVERY_RECEIPTS.bits(), 0x80);
    }

    #[test]
    fn contains_checks_every_bit_of_the_argument() {
        let flags = MessageFlags::SEND_PUSH | MessageFlags::DONT_ACK;
        assert_eq!(flags.bits(), 0x05);
        assert!(flags.contains(MessageFlags::SEND_PUSH));
        assert!(flags.contains(MessageFlags::DONT_ACK));
        assert!(flags.contains(MessageFlags::NONE));
        assert!(!flags.contains(MessageFlags::DONT_QUEUE));
        assert!(!flags.contains(MessageFlags::SEND_PUSH | MessageFlags::DONT_QUEUE));
        assert_eq!(
            flags.without(MessageFlags::SEND_PUSH),
            MessageFlags::DONT_ACK
        );
    }

    #[test]
    fn debug_names_known_bits_and_keeps_unknown_ones() {
        let flags = MessageFlags(0x01 | 0x80 | 0x08);
        assert_eq!(
            format!("{flags:?}"),
            "MessageFlags(0x89: SEND_PUSH | NO_DELIVERY_RECEIPTS | 0x08)"
        );
        assert_eq!(format!("{:?}", MessageFlags::NONE), "MessageFlags(0x00)");
    }
}
