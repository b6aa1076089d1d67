//! WebSocket close codes of the mediator connection (spec §3.5) and whether to reconnect.

use core::fmt;
use core::hash::{Hash, Hasher};

/// What a device may do after the connection closed with a code (spec §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reconnect {
    /// Reconnect on its own (with backoff).
    Automatic,
    /// Stop and tell the user; reconnecting without a change cannot succeed.
    NeedsUserAction,
}

/// A close code of spec §3.5, or any other code as received.
///
/// Equality and hashing go by the numeric code, so `Other(1000) == Normal`; [`CloseCode::from_u16`]
/// never produces `Other` for a listed code.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is shutting down.
    ServerShutdown,
    /// 1006: the connection dropped without a close frame (local only, never sent).
    AbnormalClosure,
    /// 1011: the server hit an internal error.
    ServerInternalError,
    /// 1013 (RFC 6455 registry, "Try Again Later"): the mediator is busy, e.g. too many
    /// connections of the group are still in their handshake.
    TryAgainLater,
    /// 4000: the chat server connection closed.
    CspClosed,
    /// 4001: the chat server connection could not be established.
    CspUnableToEstablish,
    /// 4009: internal error around the chat server connection.
    CspInternalError,
    /// 4010: a d2m protocol error.
    ProtocolError,
    /// 4011: the transaction's TTL ran out.
    TransactionTtlExceeded,
    /// 4012: the device acked a message the mediator does not know.
    UnexpectedAck,
    /// 4013: the device was idle too long (or, locally, an echo timed out).
    ClientTimeout,
    /// 4110: no common protocol version.
    UnsupportedProtocolVersion,
    /// 4111: no free device slot and the policy was REJECT.
    DeviceLimitReached,
    /// 4112: the same device id connected again; this older connection is replaced.
    DeviceIdReused,
    /// 4113: another device dropped this one.
    DeviceDropped,
    /// 4114: the reflection queue hit its limit; the device's data on the mediator is gone.
    ReflectionQueueLengthLimitReached,
    /// 4115: `expected_device_slot_state` differs from the mediator's view.
    ExpectedDeviceSlotStateMismatch,
    /// 5000: client-internal error (local only, never sent).
    InternalError,
    /// 5001: the WebSocket could not be opened (local only, never sent).
    WebsocketUnableToEstablish,
    /// Any code the spec does not list.
    Other(u16),
}

impl CloseCode {
    /// The listed code for a number, else [`CloseCode::Other`].
    #[must_use]
    pub const fn from_u16(code: u16) -> Self {
        match code {
            1000 => Self::Normal,
            1001 => Self::ServerShutdown,
            1006 => Self::AbnormalClosure,
            1011 => Self::ServerInternalError,
            1013 => Self::TryAgainLater,
            4000 => Self::CspClosed,
            4001 => Self::CspUnableToEstablish,
            4009 => Self::CspInternalError,
            4010 => Self::ProtocolError,
            4011 => Self::TransactionTtlExceeded,
            4012 => Self::UnexpectedAck,
            4013 => Self::ClientTimeout,
            4110 => Self::UnsupportedProtocolVersion,
            4111 => Self::DeviceLimitReached,
            4112 => Self::DeviceIdReused,
            4113 => Self::DeviceDropped,
            4114 => Self::ReflectionQueueLengthLimitReached,
            4115 => Self::ExpectedDeviceSlotStateMismatch,
            5000 => Self::InternalError,
            5001 => Self::WebsocketUnableToEstablish,
            other => Self::Other(other),
        }
    }

    /// The numeric code.
    #[must_use]
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::ServerShutdown => 1001,
            Self::AbnormalClosure => 1006,
            Self::ServerInternalError => 1011,
            Self::TryAgainLater => 1013,
            Self::CspClosed => 4000,
            Self::CspUnableToEstablish => 4001,
            Self::CspInternalError => 4009,
            Self::ProtocolError => 4010,
            Self::TransactionTtlExceeded => 4011,
            Self::UnexpectedAck => 4012,
            Self::ClientTimeout => 4013,
            Self::UnsupportedProtocolVersion => 4110,
            Self::DeviceLimitReached => 4111,
            Self::DeviceIdReused => 4112,
            Self::DeviceDropped => 4113,
            Self::ReflectionQueueLengthLimitReached => 4114,
            Self::ExpectedDeviceSlotStateMismatch => 4115,
            Self::InternalError => 5000,
            Self::WebsocketUnableToEstablish => 5001,
            Self::Other(code) => code,
        }
    }

    /// Spec §3.5: 1xxx and 40xx reconnect automatically, 41xx need the user; any other code
    /// is logged and reconnects automatically.
    #[must_use]
    pub const fn reconnect(self) -> Reconnect {
        match self.as_u16() {
            4100..=4199 => Reconnect::NeedsUserAction,
            _ => Reconnect::Automatic,
        }
    }

    /// Whether the code only describes a local event and must never be sent in a close frame
    /// (1006 is reserved by RFC 6455 §7.4.1; 5000 and 5001 are client-internal per spec §3.5).
    #[must_use]
    pub const fn is_local_only(self) -> bool {
        matches!(
            self,
            Self::AbnormalClosure | Self::InternalError | Self::WebsocketUnableToEstablish
        )
    }

    /// A short reason for the close frame (RFC 6455 allows at most 123 bytes).
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::ServerShutdown => "server shutting down",
            Self::AbnormalClosure => "abnormal closure",
            Self::ServerInternalError => "server internal error",
            Self::TryAgainLater => "try again later",
            Self::CspClosed => "chat server connection closed",
            Self::CspUnableToEstablish => "chat server unreachable",
            Self::CspInternalError => "chat server connection error",
            Self::ProtocolError => "protocol error",
            Self::TransactionTtlExceeded => "transaction ttl exceeded",
            Self::UnexpectedAck => "unexpected ack",
            Self::ClientTimeout => "client timeout",
            Self::UnsupportedProtocolVersion => "unsupported protocol version",
            Self::DeviceLimitReached => "device limit reached",
            Self::DeviceIdReused => "device id reused",
            Self::DeviceDropped => "device dropped",
            Self::ReflectionQueueLengthLimitReached => "reflection queue length limit reached",
            Self::ExpectedDeviceSlotStateMismatch => "expected device slot state mismatch",
            Self::InternalError => "client internal error",
            Self::WebsocketUnableToEstablish => "websocket unable to establish",
            Self::Other(_) => "unknown close code",
        }
    }
}

impl PartialEq for CloseCode {
    fn eq(&self, other: &Self) -> bool {
        self.as_u16() == other.as_u16()
    }
}

impl Eq for CloseCode {}

impl Hash for CloseCode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_u16().hash(state);
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self::from_u16(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.as_u16()
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_u16(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Reconnect::{Automatic, NeedsUserAction};

    /// Spec §3.5, transcribed by hand.
    const TABLE: [(u16, Reconnect); 19] = [
        (1000, Automatic),
        (1001, Automatic),
        (1006, Automatic),
        (1011, Automatic),
        (4000, Automatic),
        (4001, Automatic),
        (4009, Automatic),
        (4010, Automatic),
        (4011, Automatic),
        (4012, Automatic),
        (4013, Automatic),
        (4110, NeedsUserAction),
        (4111, NeedsUserAction),
        (4112, NeedsUserAction),
        (4113, NeedsUserAction),
        (4114, NeedsUserAction),
        (4115, NeedsUserAction),
        (5000, Automatic),
        (5001, Automatic),
    ];

    #[test]
    fn every_listed_code_is_named_and_classified() {
        for (code, reconnect) in TABLE {
            let c = CloseCode::from_u16(code);
            assert!(!matches!(c, CloseCode::Other(_)), "{code} should be named");
            assert_eq!(c.as_u16(), code);
            assert_eq!(c.reconnect(), reconnect, "{code}");
            assert_ne!(c.reason(), CloseCode::Other(0).reason(), "{code}");
        }
    }

    #[test]
    fn named_variants_map_to_their_numbers() {
        assert_eq!(CloseCode::ProtocolError.as_u16(), 4010);
        assert_eq!(CloseCode::DeviceIdReused.as_u16(), 4112);
        assert_eq!(CloseCode::ExpectedDeviceSlotStateMismatch.as_u16(), 4115);
        assert_eq!(CloseCode::ServerInternalError.as_u16(), 1011);
        assert_eq!(
            CloseCode::from_u16(4114),
            CloseCode::ReflectionQueueLengthLimitReached
        );
    }

    #[test]
    fn unknown_codes_follow_the_class_rules() {
        for (code, reconnect) in [
            (1002, Automatic),
            (1999, Automatic),
            (4002, Automatic),
            (4099, Automatic),
            (4100, NeedsUserAction),
            (4116, NeedsUserAction),
            (4199, NeedsUserAction),
            (4200, Automatic),
            (3000, Automatic),
            (4999, Automatic),
            (0, Automatic),
            (65535, Automatic),
        ] {
            let c = CloseCode::from_u16(code);
            assert_eq!(c, CloseCode::Other(code));
            assert!(matches!(c, CloseCode::Other(n) if n == code));
            assert_eq!(c.reconnect(), reconnect, "{code}");
        }
    }

    #[test]
    fn other_with_a_listed_number_equals_the_named_code() {
        assert_eq!(CloseCode::Other(4113), CloseCode::DeviceDropped);
        assert_ne!(CloseCode::Other(4113), CloseCode::DeviceLimitReached);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        for (code, _) in TABLE {
            let reason = CloseCode::from_u16(code).reason();
            assert!(
                !reason.is_empty() && reason.len() <= 123,
                "{code}: {reason}"
            );
        }
        assert!(CloseCode::Other(4999).reason().len() <= 123);
    }

    #[test]
    fn only_local_codes_are_local_only() {
        let local: Vec<u16> = TABLE
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| CloseCode::from_u16(*c).is_local_only())
            .collect();
        assert_eq!(local, [1006, 5000, 5001]);
    }

    proptest! {
        #[test]
        fn from_and_as_u16_round_trip(code: u16) {
            prop_assert_eq!(CloseCode::from_u16(code).as_u16(), code);
        }
    }
}
