//! The device's view of the group lock (spec §6).

/// Where this device stands with the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Transaction {
    /// No attempt in flight.
    #[default]
    Idle,
    /// `BeginTransaction` sent, waiting for the ack or a rejection.
    Beginning,
    /// Rejected: waiting for `TransactionEnded`; a second rejection without a new attempt is a
    /// protocol error.
    Rejected,
    /// The lock is held.
    Held,
    /// `CommitTransaction` sent, waiting for the ack.
    Committing,
}

impl Transaction {
    /// A new attempt may start from idle or after a rejection.
    pub(super) const fn may_begin(self) -> bool {
        matches!(self, Self::Idle | Self::Rejected)
    }
}
