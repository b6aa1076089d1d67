//! Why a connection ends, and what the client is told (spec §9.4 close-error 0xe0).

use core::fmt;

use tandem_shared::csp::{CspError, PayloadError};

/// Why a connection ends.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed the connection between units.
    ClientClosed,
    /// The client closed the connection in the middle of a unit (truncated frame or struct).
    Truncated,
    /// Reading or writing the socket failed.
    Io(std::io::Error),
    /// The client did not finish the handshake in time.
    HandshakeTimeout,
    /// The client did not take our bytes in time.
    WriteTimeout,
    /// The CSP state machine failed (handshake or frame layer).
    Csp(CspError),
    /// A payload is malformed or not allowed from a client.
    Payload(PayloadError),
    /// A well-formed payload breaks a server rule.
    Protocol(&'static str),
    /// No frame within the idle timeout.
    IdleTimeout,
    /// A newer session with the same identity and csp-device-id logged in.
    Replaced,
    /// The server is shutting down.
    Shutdown,
    /// Storage failed; nothing unacked was lost, the client may retry.
    StorageFailure,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientClosed => f.write_str("closed by the client"),
            Self::Truncated => f.write_str("connection ended inside a unit (truncated frame)"),
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::HandshakeTimeout => f.write_str("handshake timeout"),
            Self::WriteTimeout => f.write_str("write timeout"),
            Self::Csp(e) => write!(f, "protocol error: {e}"),
            Self::Payload(e) => write!(f, "bad payload: {e}"),
            Self::Protocol(what) => write!(f, "protocol violation: {what}"),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::Replaced => {
                f.write_str("another connection with the same identity and device id took over")
            }
            Self::Shutdown => f.write_str("server shutting down"),
            Self::StorageFailure => f.write_str("server storage failure"),
        }
    }
}

impl CloseReason {
    /// The close-error to send, if the client should get one: `(can_reconnect, text)`.
    ///
    /// Client mistakes get `can_reconnect = false` (reconnecting would repeat them), and so does
    /// a replaced session (two devices would otherwise take turns forever); conditions on the
    /// server's side get `true`.
    #[must_use]
    pub fn close_error(&self) -> Option<(bool, String)> {
        let can_reconnect = match self {
            Self::ClientClosed | Self::Io(_) | Self::WriteTimeout | Self::HandshakeTimeout => {
                return None
            }
            Self::Csp(_) | Self::Payload(_) | Self::Protocol(_) | Self::Replaced => false,
            Self::Truncated | Self::IdleTimeout | Self::Shutdown | Self::StorageFailure => true,
        };
        Some((can_reconnect, self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_may_not_reconnect_and_server_conditions_may() {
        assert_eq!(
            CloseReason::Csp(CspError::FrameTooLarge(8193)).close_error(),
            Some((false, "protocol error: frame too large: 8193 bytes".into()))
        );
        assert!(!CloseReason::Replaced.close_error().unwrap().0);
        assert_eq!(
            CloseReason::IdleTimeout.close_error(),
            Some((true, "idle timeout".into()))
        );
        assert!(CloseReason::StorageFailure.close_error().unwrap().0);
        assert_eq!(CloseReason::ClientClosed.close_error(), None);
        assert_eq!(CloseReason::HandshakeTimeout.close_error(), None);
    }
}
