//! Why a harness call failed; every variant names the device or process and what was awaited.

use std::time::Duration;

use tandem_shared::d2m::CloseCode;
use tandem_shared::device::DeviceError;

/// A harness failure (never a panic): the message says who, what was awaited and what happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// Nothing matching arrived in time.
    #[error("{device}: no {awaited} within {after:?}; last events: [{recent}]")]
    Timeout {
        /// The device's name.
        device: String,
        /// What the caller waited for.
        awaited: String,
        /// How long it waited.
        after: Duration,
        /// The device's latest events, oldest first.
        recent: String,
    },
    /// The connection ended while something else was awaited.
    #[error("{device}: closed with {code} ({origin}) while waiting for {awaited}; last events: [{recent}]")]
    Closed {
        /// The device's name.
        device: String,
        /// What the caller waited for.
        awaited: String,
        /// The close code.
        code: u16,
        /// "local" or "remote".
        origin: &'static str,
        /// The device's latest events, oldest first.
        recent: String,
    },
    /// An event came that the caller said must not come.
    #[error("{device}: unexpected {event} while {context}")]
    Unexpected {
        /// The device's name.
        device: String,
        /// The event, as `Debug`.
        event: String,
        /// What the caller was doing.
        context: String,
    },
    /// The device session refused a command or failed on input.
    #[error("{device}: {action}: {source}")]
    Session {
        /// The device's name.
        device: String,
        /// The command or input.
        action: String,
        /// The session's error.
        source: DeviceError,
    },
    /// The WebSocket could not be opened or failed.
    #[error("{device}: WebSocket {action}: {detail}")]
    WebSocket {
        /// The device's (or raw socket's) name.
        device: String,
        /// Connect, send or receive.
        action: &'static str,
        /// The error text.
        detail: String,
    },
    /// A process could not be built, started or did not come up.
    #[error("{process}: {detail}")]
    Process {
        /// Which process.
        process: String,
        /// What went wrong, with its log tail if there is one.
        detail: String,
    },
    /// An HTTP request failed or was answered unexpectedly.
    #[error("HTTP {request}: {detail}")]
    Http {
        /// Method and path.
        request: String,
        /// What went wrong.
        detail: String,
    },
    /// File system trouble around the scratch directory or logs.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl HarnessError {
    /// The close code, for [`HarnessError::Closed`].
    #[must_use]
    pub const fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::Closed { code, .. } => Some(CloseCode::from_u16(*code)),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn process(process: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Process {
            process: process.into(),
            detail: detail.into(),
        }
    }
}
